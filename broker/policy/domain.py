"""A domain's whole policy, and the one decision a broker takes each interval."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from enum import StrEnum

from broker.policy.borrowing import BorrowingPolicy
from broker.policy.demand import DomainState
from broker.policy.lending import LendingPolicy
from broker.policy.reclamation import ReclamationPolicy


class Action(StrEnum):
    BORROW = "borrow"  # ask peers for `nodes` VMs
    RETURN = "return"  # give back `nodes` idle borrowed VMs
    RECLAIM = "reclaim"  # take back up to `nodes` own nodes lent to peers
    LEND = "lend"  # up to `nodes` idle nodes may be offered to peers
    HOLD = "hold"  # nothing to do


@dataclass(frozen=True, slots=True)
class Intent:
    action: Action
    nodes: int = 0


@dataclass(frozen=True, slots=True)
class DomainPolicy:
    """Lending, borrowing and reclamation policy of one domain, plus its local time zone."""

    lending: LendingPolicy = LendingPolicy()
    borrowing: BorrowingPolicy = BorrowingPolicy()
    reclamation: ReclamationPolicy = ReclamationPolicy()
    tz: tzinfo = field(default=timezone.utc)

    def intent(self, state: DomainState, now: float) -> Intent:
        """From the sign of n_a: reclaim or borrow (n_a > 0), return or lend (n_a < 0).

        A domain that lends nodes and needs more takes its own back before it borrows; one
        with a surplus gives borrowed VMs back before it lends.
        """
        n = state.need
        if n > 0:
            if state.lent > 0:
                return Intent(Action.RECLAIM, min(n, state.lent))
            want = self.borrowing.wanted(state, now, self.tz)
            return Intent(Action.BORROW, want) if want else Intent(Action.HOLD)
        if n < 0:
            if state.borrowed > 0:
                back = self.borrowing.to_return(state)
                return Intent(Action.RETURN, back) if back else Intent(Action.HOLD)
            offer = self.lending.offerable(state, now, tz=self.tz)
            return Intent(Action.LEND, offer) if offer else Intent(Action.HOLD)
        return Intent(Action.HOLD)
