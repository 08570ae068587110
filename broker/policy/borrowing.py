"""Borrowing policy: how many VMs a domain asks for, and which offers it accepts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo, timezone

from broker.policy.demand import DomainState
from broker.policy.hosts import HostProperties, Location, Requirements
from broker.policy.reclamation import Mode, Terms
from broker.policy.windows import TimeWindow, in_windows


@dataclass(frozen=True, slots=True)
class Verdict:
    """An answer to an offer: ``ok``, or why not."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, slots=True)
class BorrowingPolicy:
    """enabled:            borrow at all.
    max_borrowed:       cap on VMs borrowed at once (None: no cap).
    require:            minimum CPUs, memory and disk of every accepted host.
    accept_reclamation: reclamation modes the domain accepts from a lender.
    min_lease_s:        shortest lease accepted under the ``lease`` mode.
    windows:            times of day when borrowing is allowed (empty: always).
    location:           maximum RTT and sites accepted (per lender too), co-location.
    """

    enabled: bool = True
    max_borrowed: int | None = None
    require: Requirements = Requirements()
    accept_reclamation: frozenset[Mode] = frozenset(Mode)
    min_lease_s: float = 0.0
    windows: tuple[TimeWindow, ...] = field(default=())
    location: Location = Location()

    def wanted(self, state: DomainState, now: float, tz: tzinfo = timezone.utc) -> int:
        """VMs to ask peers for now: n_a when positive and nothing is lent, within the caps."""
        if not self.enabled or state.need <= 0 or state.lent > 0:
            return 0
        if not in_windows(self.windows, now, tz):
            return 0
        count = state.need
        if self.max_borrowed is not None:
            count = min(count, self.max_borrowed - state.borrowed)
        return max(0, count)

    def to_return(self, state: DomainState) -> int:
        """Borrowed VMs to give back now: idle ones, up to the surplus -n_a."""
        if state.need >= 0:
            return 0
        return min(state.idle_borrowed, -state.need)

    def accepts_terms(self, terms: Terms) -> Verdict:
        if terms.mode not in self.accept_reclamation:
            allowed = ", ".join(sorted(m.value for m in self.accept_reclamation)) or "none"
            return Verdict(False, f"reclamation {terms.mode.value} not accepted ({allowed})")
        if terms.mode is Mode.LEASE and terms.lease_s < self.min_lease_s:
            return Verdict(False, f"lease {terms.lease_s:g} s < minimum {self.min_lease_s:g} s")
        return Verdict(True)

    def accepts(
        self,
        host: HostProperties,
        terms: Terms,
        borrowed: int,
        now: float,
        tz: tzinfo = timezone.utc,
        lender: str | None = None,
    ) -> Verdict:
        """Whether one offered host (of ``lender``), with the lender's terms, is acceptable
        now."""
        if not self.enabled:
            return Verdict(False, "borrowing disabled")
        if self.max_borrowed is not None and borrowed >= self.max_borrowed:
            return Verdict(False, f"already {borrowed} borrowed (max {self.max_borrowed})")
        if not in_windows(self.windows, now, tz):
            return Verdict(False, "outside the borrowing windows")
        short = self.require.shortfall(host)
        if short:
            return Verdict(False, short)
        away = self.location.refusal(host, lender)
        if away:
            return Verdict(False, away)
        return self.accepts_terms(terms)
