"""Reconciliation carried out: observe what runs, let :mod:`~broker.service.reconcile` plan the
repairs, and make them.

On start and every interval the broker compares its contracts with the scheduler's nodes, the
VMs and the switch peers that run, and with when each peer was last heard;
:func:`~broker.service.reconcile.plan` (no I/O) says what to repair, and this module does it
with the scheduler, the probes and the lender's and borrower's own steps.
"""

from __future__ import annotations

import asyncio
import logging

from broker.negotiation.contracts import Contract, ContractState, IllegalTransition, Role
from broker.negotiation.messages import Decline
from broker.scheduler import SchedulerError, Snapshot
from broker.service import reconcile as rec
from broker.service.borrowing import Borrowing
from broker.service.context import Context
from broker.service.lending import Lending
from broker.service.probes import ProbeError
from broker.service.store import StaleContract

log = logging.getLogger("broker")
S = ContractState


class Repairs:
    def __init__(self, ctx: Context, lending: Lending, borrowing: Borrowing) -> None:
        self.ctx = ctx
        self.lending = lending
        self.borrowing = borrowing
        self.unhealthy_since: dict[str, float] = {}  # borrowed node -> first seen down
        self.vm_missing_since: dict[str, float] = {}  # lent VM -> first seen missing
        self.done: list[str] = []  # the last repairs, as the status shows them
        self.limits = rec.Limits(ctx.config.node_down_grace_s, ctx.config.peer_lost_timeout_s,
                                 ctx.config.offer_ttl_s)

    def note(self, action: rec.Action) -> None:
        self.done.append(str(action))
        del self.done[:-100]
        self.ctx.metrics.repairs.labels(kind=action.kind).inc()

    def end_after_peer(self, c: Contract, reason: str) -> None:
        """The peer has ended the contract: end our side (borrower: nodes down and deleted;
        lender: VMs stopped, hosts resumed); no need to tell the peer."""
        c = self.ctx.advance(c, S.RECLAIMING, reason)
        self.ctx.busy.add(c.id)
        if c.role is Role.BORROWER:
            self.ctx.spawn(self.borrowing.finish_release(c, tell_lender=False))
        else:
            self.ctx.spawn(self.lending.finish_release(c))

    async def observe(self, snap: Snapshot | None = None) -> rec.Observed:
        """What runs now: the scheduler's nodes (with their state), VMs, switch peers, and
        since when each fault has lasted and each peer was last heard."""
        ctx = self.ctx
        at = ctx.clock()
        if snap is None:
            snap = await ctx.snapshot()
        found: dict[str, frozenset[str] | None] = {"vms": None, "switch": None}
        for name, probe in (("vms", ctx.vm_probe), ("switch", ctx.switch_probe)):
            if probe is None:
                continue
            try:
                found[name] = await asyncio.to_thread(probe.list)
            except ProbeError as exc:
                log.error("reconciliation cannot see everything: %s", exc)
        vms = found["vms"]
        now = ctx.clock()
        unhealthy = {n.name for n in snap.borrowed if n.down_or_not_responding}
        self.unhealthy_since = rec.track(self.unhealthy_since, unhealthy, now)
        if vms is not None:  # a probe that failed tells nothing about missing VMs
            missing = rec.missing_vms(ctx.store.contracts(open_only=True), vms)
            self.vm_missing_since = rec.track(self.vm_missing_since, missing, now)
        return rec.Observed(
            at=at,
            borrowed_nodes=frozenset(n.name for n in snap.borrowed),
            lent_nodes=frozenset(n.name for n in snap.lent),
            vms=vms,
            switch_peers=found["switch"],
            unhealthy_since=dict(self.unhealthy_since),
            dead_nodes=frozenset(n.name for n in snap.borrowed if n.declared_dead),
            vm_missing_since=dict(self.vm_missing_since),
            peer_heard={p: ctx.peer_heard.get(p, ctx.started_at) for p in ctx.config.peers},
        )

    async def reconcile(self, starting: bool = True, snap: Snapshot | None = None) -> list[rec.Action]:
        """Compare contracts with what runs, and repair the difference (on start, and then
        every interval)."""
        observed = await self.observe(snap)
        # contracts are read after the observation: one that changed meanwhile is newer than
        # ``observed.at`` and the plan leaves it for the next interval
        actions = rec.plan(self.ctx.store.contracts(), observed, starting=starting,
                           now=self.ctx.clock(), limits=self.limits, busy=frozenset(self.ctx.busy))
        for action in actions:
            log.warning("reconcile: %s", action)
            self.note(action)
            try:
                await self._repair(action, starting)
            except (SchedulerError, ProbeError, IllegalTransition, StaleContract) as exc:
                log.error("reconcile: %s failed: %s", action, exc)
        return actions

    async def _repair(self, a: rec.Action, starting: bool) -> None:
        ctx = self.ctx
        c = ctx.store.get(a.contract_id) if a.contract_id else None
        if a.contract_id and (c is None or c.state.final or c.id in ctx.busy):
            return  # moved on since the plan was made
        if a.kind == "remove_node":
            await asyncio.to_thread(ctx.scheduler.remove, a.target, "viocluster-orphan")
        elif a.kind == "unlend":
            await asyncio.to_thread(ctx.scheduler.unlend, a.target)
        elif a.kind == "relend" and c is not None:
            await asyncio.to_thread(ctx.scheduler.lend, a.target, c.id)
        elif a.kind == "kill_vm" and ctx.vm_probe is not None:
            await asyncio.to_thread(ctx.vm_probe.remove, a.target)
        elif a.kind == "remove_peer" and ctx.switch_probe is not None:
            await asyncio.to_thread(ctx.switch_probe.remove, a.target)
        elif a.kind == "expire" and c is not None and c.state is S.PROPOSED:
            ctx.drop_proposal(c, a.why)
            if starting:
                await ctx.send(c.peer, ctx.msg(Decline, c.peer, contract_id=c.id, reason=a.why))
        elif c is None:
            return
        elif a.kind == "rollback":
            await self.borrowing.release(c)  # nodes out of the scheduler before the API opens
            self._start(c, self.borrowing.rollback(c))
        elif a.kind == "provision":
            self._start(c, self.borrowing.provision(c))
        elif a.kind == "finish_reclaim":
            self._start(c, self.borrowing.finish_release(c, tell_lender=True)
                        if c.role is Role.BORROWER else
                        self.lending.reclaim(c, c.reason or "finishing an interrupted reclaim"))
        elif a.kind in ("vanished", "node_down") and c.state is S.ACTIVE:
            # our side first (down: jobs requeued; deleted), then the lender is told
            self._start(c, self.borrowing.give_back(c, a.why))
        elif a.kind in ("vm_gone", "peer_lost"):
            # the borrower is told (if it answers), the VMs stopped, our hosts resumed
            self._start(c, self.lending.reclaim(c, a.why))

    def _start(self, c: Contract, step: object) -> None:
        self.ctx.busy.add(c.id)
        self.ctx.spawn(step)
