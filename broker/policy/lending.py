"""Lending policy: how many idle nodes a domain offers to a peer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import tzinfo, timezone

from broker.policy.demand import DomainState
from broker.policy.windows import TimeWindow, in_windows


@dataclass(frozen=True, slots=True)
class LendingPolicy:
    """enabled:       lend at all.
    fraction_idle: share of the idle physical nodes that may be lent (paper: 1/2).
    min_reserve:   idle nodes always kept back for the domain's own users.
    max_lent:      cap on nodes lent at once, to all peers together (None: no cap).
    peers:         peers that may borrow (None: every peer).
    windows:       times of day when lending is allowed (empty: always).
    min_free_disk_gb: a loan whose host has less free disk (where the COWs go) is taken
                   back (None: disk not watched).
    advertise:     offer idle nodes to trusted peers unasked (an advert), each interval
                   that finds nodes to lend.
    """

    enabled: bool = True
    fraction_idle: float = 0.5
    min_reserve: int = 0
    max_lent: int | None = None
    peers: frozenset[str] | None = None
    windows: tuple[TimeWindow, ...] = field(default=())
    min_free_disk_gb: int | None = None
    advertise: bool = False

    def allows_peer(self, peer: str) -> bool:
        return self.peers is None or peer in self.peers

    def offerable(
        self, state: DomainState, now: float, peer: str | None = None, tz: tzinfo = timezone.utc
    ) -> int:
        """Nodes the domain may lend now (to ``peer``, when given) on top of what it lends.

        Only a domain with a surplus (n_a < 0) and no borrowed VMs lends; it offers at most
        fraction_idle of its idle nodes, never touches the reserve, never exceeds max_lent
        and never more than its surplus.
        """
        if not self.enabled or (peer is not None and not self.allows_peer(peer)):
            return 0
        if state.borrowed > 0 or state.need >= 0:
            return 0
        if not in_windows(self.windows, now, tz):
            return 0
        idle = state.idle_physical
        count = min(math.floor(self.fraction_idle * idle), idle - self.min_reserve, -state.need)
        if self.max_lent is not None:
            count = min(count, self.max_lent - state.lent)
        return max(0, count)
