"""Demand d_a and need n_a of one domain, as the paper defines them.

d_a is the sum of the nodes wanted by every job in the domain's queue. A batch queue (PBS
``qstat``, Slurm ``squeue``) lists the jobs that wait *and* the jobs that run; both count. If
only the waiting jobs counted, a full cluster with a short queue would find n_a < 0 and offer
to lend nodes it does not have idle.

    n_a = d_a - ((|P_a| - |L_a|) + |V_a|)

with P_a the domain's own physical nodes, L_a those of them lent to peers and V_a the VMs it
has borrowed. n_a > 0: the domain wants n_a more nodes (reclaim its own, else borrow);
n_a < 0: it has -n_a nodes too many (return borrowed VMs first, else lend).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def demand(job_nodes: Iterable[int]) -> int:
    """d_a: the sum of the nodes wanted by the jobs in the queue (waiting and running)."""
    return sum(job_nodes)


def need(d: int, physical: int, lent: int, borrowed: int) -> int:
    """n_a = d_a - ((|P_a| - |L_a|) + |V_a|)."""
    return d - ((physical - lent) + borrowed)


@dataclass(frozen=True, slots=True)
class DomainState:
    """What a broker observes of its own domain at one instant (all counts of nodes).

    physical:       |P_a|, the domain's own physical nodes (in service).
    lent:           |L_a|, own physical nodes now lent to peers (running their VMs).
    borrowed:       |V_a|, VMs borrowed from peers (booting, running or draining).
    waiting_nodes:  nodes wanted by the jobs waiting in the queue.
    running_nodes:  nodes held by the domain's running jobs (on physical nodes or VMs).
    busy_physical:  own physical nodes running the domain's own jobs.
    idle_borrowed:  borrowed VMs that are up and run no job (the ones cheap to return).
    """

    physical: int
    lent: int = 0
    borrowed: int = 0
    waiting_nodes: int = 0
    running_nodes: int = 0
    busy_physical: int = 0
    idle_borrowed: int = 0

    def __post_init__(self) -> None:
        values = (self.physical, self.lent, self.borrowed, self.waiting_nodes,
                  self.running_nodes, self.busy_physical, self.idle_borrowed)
        if not all(type(v) is int and v >= 0 for v in values):
            for name, value in zip(self.__slots__, values):
                if not isinstance(value, int) or value < 0:
                    raise ValueError(f"DomainState.{name} must be an int >= 0, not {value!r}")
        if self.lent + self.busy_physical > self.physical:
            raise ValueError(
                f"lent ({self.lent}) + busy_physical ({self.busy_physical}) exceed "
                f"physical ({self.physical})"
            )
        if self.idle_borrowed > self.borrowed:
            raise ValueError(f"idle_borrowed ({self.idle_borrowed}) > borrowed ({self.borrowed})")

    @property
    def demand(self) -> int:
        """d_a."""
        return self.waiting_nodes + self.running_nodes

    @property
    def need(self) -> int:
        """n_a."""
        return need(self.demand, self.physical, self.lent, self.borrowed)

    @property
    def idle_physical(self) -> int:
        """Own physical nodes that are neither lent nor running a job."""
        return self.physical - self.lent - self.busy_physical
