"""Probes for what runs outside the scheduler: VMs on lending hosts, peers of switch daemons.

A probe is two commands from the broker config: ``list`` prints one name a line (a VM's name,
or the name of a switch peer added at run time, which borrow.yml names after the lending
host), ``remove`` removes one (``{name}`` in any argument is replaced).
The data-plane tools provide them (``violinctl peers``, the COW VM tooling); a probe with no
``list`` command is off, and reconciliation then leaves that part alone.
"""

from __future__ import annotations

import logging
import subprocess

from broker.errors import UserError
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
        return frozenset(line.strip() for line in out.splitlines() if line.strip())

    def remove(self, name: str) -> None:
        argv = [arg.replace("{name}", name) for arg in self.config.remove]
        log.info("%s probe: removing %s", self.label, name)
        self._run(argv)
