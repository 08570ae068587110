"""The adapter a broker's config names: the one place that knows every adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.errors import ConfigError
from broker.scheduler.base import SchedulerAdapter
from broker.scheduler.pbs import PbsAdapter
from broker.scheduler.slurm import SlurmAdapter

ADAPTERS: dict[str, type[SlurmAdapter] | type[PbsAdapter]] = {
    "slurm": SlurmAdapter,
    "pbs": PbsAdapter,
}


def make_adapter(section: Mapping[str, Any], source: str = "scheduler") -> SchedulerAdapter:
    """Build the adapter that ``section['kind']`` names (slurm or pbs)."""
    kind = section.get("kind", "slurm")
    options = {k: v for k, v in section.items() if k != "kind"}
    adapter = ADAPTERS.get(kind) if isinstance(kind, str) else None
    if adapter is None:
        raise ConfigError(f"{source}.kind: got {kind!r}; allowed: {', '.join(ADAPTERS)}")
    return adapter.from_options(options, source)
