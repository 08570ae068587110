"""Reclamation: how a lender takes its nodes back, and the terms it offers with a loan.

Modes:

- ``immediate`` (the paper's): the lender takes back as many nodes as it needs, now; jobs on
  them are preempted and restart from zero on the borrower.
- ``lease``: a loan lasts ``lease_s`` seconds; the lender cannot reclaim earlier, and the node
  goes back when the lease ends (a job still on it is preempted).
- ``drain``: reclaimed nodes take no new job; each goes back when its running job ends
  (idle ones at once). Nothing is preempted before ``drain_deadline_s`` (when set): a loan
  still running a job that long after it began to drain is taken back at once, its job
  requeued.
- ``gradual``: like immediate, but at most ``per_interval`` nodes per broker interval.

Whatever the mode, ``max_job_s`` (when set) caps the length of the borrower's jobs a loan may
run, as the lender's borrowed partition would enforce it with Slurm's ``MaxTime``: a job starts
on the loan's nodes only if its requested time is at most ``max_job_s``. A drained node then
comes back within ``max_job_s`` (plus any overrun of the job's request) at worst.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    IMMEDIATE = "immediate"
    LEASE = "lease"
    DRAIN = "drain"
    GRADUAL = "gradual"


@dataclass(frozen=True, slots=True)
class Terms:
    """The reclamation terms that come with a loan (the lender's policy, told to borrowers)."""

    mode: Mode = Mode.IMMEDIATE
    lease_s: float = 3600.0
    per_interval: int = 1
    drain_deadline_s: float | None = None  # under drain: longest wait for a job (None: none)
    max_job_s: float | None = None  # longest requested time of a job on the loan (None: any)

    def admits(self, requested_s: float) -> bool:
        """Whether a borrower's job requesting ``requested_s`` seconds may run on the loan."""
        return self.max_job_s is None or requested_s <= self.max_job_s


@dataclass(frozen=True, slots=True)
class Loan:
    """One node lent to (or borrowed from) a peer, as the lender sees it.

    busy_since: when the borrower's job on it started (None: no job runs on it).
    draining_since: when the lender began to drain it (None: not draining).
    free_disk_gb: the least free disk of its hosts, last measured (None: not measured).
    """

    id: str | int
    peer: str
    started: float
    busy_since: float | None = None
    draining_since: float | None = None
    free_disk_gb: float | None = None


@dataclass(frozen=True, slots=True)
class ReclaimPlan:
    """Loans to take back now (jobs on them preempted) and loans to drain."""

    now: tuple[str | int, ...] = ()
    drain: tuple[str | int, ...] = ()

    def __len__(self) -> int:
        return len(self.now) + len(self.drain)


def _cheapest_first(loans: Sequence[Loan], now: float) -> list[Loan]:
    """Idle loans first, then those whose job has run the least (least work lost)."""
    return sorted(
        loans,
        key=lambda l: (l.busy_since is not None, -(l.busy_since or 0.0), str(l.id)),
    )


@dataclass(frozen=True, slots=True)
class ReclamationPolicy:
    """The lender's reclamation terms and the choice of which loans to take back."""

    terms: Terms = Terms()

    @property
    def mode(self) -> Mode:
        return self.terms.mode

    def plan(self, loans: Sequence[Loan], wanted: int, now: float) -> ReclaimPlan:
        """Which of ``loans`` to take back when the lender wants ``wanted`` nodes back.

        Loans already draining must not be passed in. Under ``lease`` nothing is taken back
        before its lease ends (see :meth:`expired`).
        """
        if wanted <= 0 or not loans:
            return ReclaimPlan()
        mode = self.terms.mode
        if mode is Mode.LEASE:
            return ReclaimPlan()
        if mode is Mode.GRADUAL:
            wanted = min(wanted, self.terms.per_interval)
        chosen = _cheapest_first(loans, now)[:wanted]
        if mode is Mode.DRAIN:
            idle = tuple(l.id for l in chosen if l.busy_since is None)
            busy = tuple(l.id for l in chosen if l.busy_since is not None)
            return ReclaimPlan(now=idle, drain=busy)
        return ReclaimPlan(now=tuple(l.id for l in chosen))

    def overdue(self, draining: Sequence[Loan], now: float) -> tuple[str | int, ...]:
        """Under ``drain`` with a deadline: the draining loans whose job still runs
        ``drain_deadline_s`` after they began to drain (to be taken back at once)."""
        limit = self.terms.drain_deadline_s
        if self.terms.mode is not Mode.DRAIN or limit is None:
            return ()
        return tuple(l.id for l in draining if l.busy_since is not None
                     and l.draining_since is not None and now >= l.draining_since + limit)

    def expired(self, loans: Sequence[Loan], now: float) -> tuple[str | int, ...]:
        """Under ``lease``: the loans whose lease has ended by ``now`` (to be returned)."""
        if self.terms.mode is not Mode.LEASE:
            return ()
        return tuple(l.id for l in loans if now >= l.started + self.terms.lease_s)
