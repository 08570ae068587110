"""Machine properties a lender offers and a borrower requires."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostProperties:
    """What one offered host provides to a VM."""

    cpus: int = 1
    memory_mb: int = 0
    disk_gb: int = 0


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
