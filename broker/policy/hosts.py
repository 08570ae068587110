"""Machine properties a lender offers and a borrower requires."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostProperties:
    """What one offered host provides to a VM, and where it is: the RTT to it and its site
    (None: not known, as in the simulator; a location rule does not judge what is unknown)."""

    cpus: int = 1
    memory_mb: int = 0
    disk_gb: int = 0
    rtt_ms: float | None = None
    site: str | None = None


@dataclass(frozen=True, slots=True)
class Requirements:
    """Minimum properties a borrower needs of every host it accepts."""

    cpus: int = 1
    memory_mb: int = 0
    disk_gb: int = 0

    def shortfall(self, host: HostProperties) -> str | None:
        """None when ``host`` meets every minimum, else which property falls short."""
        for name in ("cpus", "memory_mb", "disk_gb"):
            want, have = getattr(self, name), getattr(host, name)
            if have < want:
                return f"{name} {have} < required {want}"
        return None


@dataclass(frozen=True, slots=True)
class Location:
    """Where a borrower accepts hosts: at most ``max_rtt_ms`` away, at one of ``sites``
    (None: any), and, with ``co_located``, all hosts of one request at one site (it waits
    for such an offer rather than taking hosts spread over sites). ``lenders`` overrides
    ``max_rtt_ms`` and ``sites`` for the named lenders: pairs (lender, Location)."""

    max_rtt_ms: float | None = None
    sites: frozenset[str] | None = None
    co_located: bool = False
    lenders: tuple[tuple[str, "Location"], ...] = ()

    def of(self, lender: str | None) -> "Location":
        """The rule for hosts of ``lender``."""
        for name, rule in self.lenders:
            if name == lender:
                return rule
        return self

    def refusal(self, host: HostProperties, lender: str | None = None) -> str | None:
        """None when ``host`` (of ``lender``) is where the rule allows, else why not."""
        rule = self.of(lender)
        if rule.max_rtt_ms is not None and host.rtt_ms is not None \
                and host.rtt_ms > rule.max_rtt_ms:
            shown = "unknown" if host.rtt_ms == float("inf") else f"{host.rtt_ms:g} ms"
            return f"RTT {shown} > max {rule.max_rtt_ms:g} ms"
        if rule.sites is not None and host.site is not None and host.site not in rule.sites:
            return f"site {host.site} not accepted ({', '.join(sorted(rule.sites)) or 'none'})"
        return None
