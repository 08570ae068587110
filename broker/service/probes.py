"""Probes for what runs outside the scheduler: VMs on lending hosts, peers of switch daemons.

A probe is two commands from the broker config: ``list`` prints one name a line (a VM's name,
or the name of a switch peer added at run time, which borrow.yml names after the lending
host), ``remove`` removes one (``{name}`` in any argument is replaced).
The data-plane tools provide them (``violinctl peers``, the COW VM tooling); a probe with no
``list`` command is off, and reconciliation then leaves that part alone.

A listed name comes from processes a peer account runs on a lending host, so it is input the
peer controls: only names the broker itself could have given (``NAME_RE``) are taken, and only
those are ever put into a ``remove`` command, whose arguments may reach a remote shell.
"""

from __future__ import annotations

import logging
import subprocess

from broker.errors import UserError
from broker.negotiation.messages import NAME_RE
from broker.service.config import ProbeConfig

log = logging.getLogger("broker.reconcile")


class ProbeError(UserError):
    """A probe command failed; its own words are in the message."""


class CommandProbe:
    def __init__(self, label: str, config: ProbeConfig, timeout: float = 30.0) -> None:
        self.label = label
        self.config = config
        self.timeout = timeout

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def _run(self, argv: list[str]) -> str:
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProbeError(f"{self.label} probe: {' '.join(argv)}: {exc}") from None
        if proc.returncode != 0:
            raise ProbeError(
                f"{self.label} probe: {' '.join(argv)} failed (status {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout

    def list(self) -> frozenset[str] | None:
        if not self.enabled:
            return None
        out = self._run(list(self.config.list))
        names = {line.strip() for line in out.splitlines() if line.strip()}
        odd = sorted(n for n in names if not NAME_RE.match(n))
        if odd:
            log.warning("%s probe: ignoring %d listed name(s) no broker gives (letters, digits, "
                        "'.', '_', '-', at most 63): %s", self.label, len(odd),
                        ", ".join(repr(n[:40]) for n in odd[:5]))
        return frozenset(n for n in names if NAME_RE.match(n))

    def remove(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise ProbeError(f"{self.label} probe: refusing to remove {name[:40]!r}: not a name "
                             "a broker gives (letters, digits, '.', '_', '-', at most 63)")
        argv = [arg.replace("{name}", name) for arg in self.config.remove]
        log.info("%s probe: removing %s", self.label, name)
        self._run(argv)
