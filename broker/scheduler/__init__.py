"""Scheduler adapters: what the broker reads from, and changes in, a domain's batch system.

:class:`~broker.scheduler.base.SchedulerAdapter` is the interface; :mod:`.slurm` implements it
for Slurm 22.05 (``squeue --json``, ``sinfo``, dynamic nodes) and :mod:`.pbs` for PBS/Torque
(written from the documentation, untested against a live server). :func:`make_adapter` builds
one from the ``scheduler`` section of a broker's config.
"""

from broker.scheduler.base import (
    Job,
    Node,
    RemoveResult,
    SchedulerAdapter,
    SchedulerError,
    Snapshot,
)
from broker.scheduler.factory import make_adapter

__all__ = [
    "Job",
    "Node",
    "RemoveResult",
    "SchedulerAdapter",
    "SchedulerError",
    "Snapshot",
    "make_adapter",
]
