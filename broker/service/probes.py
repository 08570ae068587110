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
import re
import shutil
import subprocess

from broker.errors import UserError
from broker.negotiation.messages import NAME_RE, HostOffer
from broker.service.config import LendingHost, ProbeConfig

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


# ---------------------------------------------------------------------------- measurements

_RTT = re.compile(r"time=([0-9.]+) ms")


def ping_ms(address: str) -> float | None:
    """One ICMP round trip to ``address`` in ms (the path switch daemons' datagrams take), or None."""
    try:
        ping = subprocess.run(["ping", "-n", "-c", "1", "-W", "1", address],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    found = _RTT.search(ping.stdout)
    return float(found.group(1)) if found else None


def free_disk_gb(host: LendingHost) -> int | None:
    """Free disk where the host's COWs go, in whole GB (statvfs here, or ``df`` through
    ``measure_prefix``); None when it cannot be measured (logged)."""
    try:
        if host.measure_prefix:
            out = subprocess.run(
                [*host.measure_prefix, "df", "-Pk", host.disk_path],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.splitlines()
            return int(out[-1].split()[3]) // (1024 * 1024)
        return shutil.disk_usage(host.disk_path).free // (1 << 30)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as exc:
        logging.getLogger("broker").warning("cannot measure free disk of %s at %s: %s",
                                            host.node, host.disk_path, exc)
        return None


def measure_host(host: LendingHost, cpus: int, memory_mb: int, site: str,
                 borrower: str = "") -> HostOffer:
    """The host as it is now: CPUs and free memory (from the scheduler), free disk where the
    COWs go (:func:`free_disk_gb`, 0 when unknown), and the RTT to it (ping)."""
    disk_gb = free_disk_gb(host) or 0
    rtt = ping_ms(host.address)
    account = host.account.replace("{borrower}", borrower)
    return HostOffer(host.node, host.address, account, max(cpus, 1), memory_mb, disk_gb, site, rtt)
