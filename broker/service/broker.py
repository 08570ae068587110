"""The broker of one domain: the interpreter of the trade core's effects.

The trade core (:mod:`broker.negotiation.trade`, over :mod:`broker.policy`) decides what to
borrow, lend, take back, drain and give back; the broker observes (scheduler snapshot, clock,
what peers report), feeds the core, and carries its effects out. It is built of parts over one
:class:`~broker.service.context.Context` (connections, contract store, the steps they share):

- :class:`~broker.service.lending.Lending`: answer requests, advertise, agree, take back;
- :class:`~broker.service.borrowing.Borrowing`: ask, take offers, provision, give back;
- :class:`~broker.service.repairs.Repairs`: reconcile contracts with what runs;
- this module: route each peer's message, run the interval, heartbeat, and the status.

Blocking work (scheduler commands, playbooks) runs in threads so the API keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from broker.negotiation import trade
from broker.negotiation.contracts import Contract, ContractState, IllegalTransition, Role
from broker.negotiation.messages import (
    Accept,
    Decline,
    Heartbeat,
    Message,
    Offer,
    Reclaim,
    Request,
    Return,
)
from broker.policy import Action
from broker.provisioning import Executor
from broker.scheduler import SchedulerAdapter, SchedulerError
from broker.service import reconcile as rec
from broker.service.borrowing import Borrowing
from broker.service.certwatch import CertWatch
from broker.service.client import PeerClient
from broker.service.config import BrokerConfig
from broker.service.context import Context, unknown
from broker.service.lending import Lending, loan_of
from broker.service.metrics import Metrics
from broker.service.probes import CommandProbe
from broker.service.repairs import Repairs
from broker.service.store import StaleContract, Store

COMPACT_EVERY_S = 3600.0  # how often closed contracts past their retention are removed

log = logging.getLogger("broker")
S = ContractState


class Broker:
    def __init__(
        self,
        config: BrokerConfig,
        store: Store,
        scheduler: SchedulerAdapter,
        executor: Executor,
        client: PeerClient,
        vm_probe: CommandProbe | None = None,
        switch_probe: CommandProbe | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx = Context(config, store, scheduler, executor, client, vm_probe,
                                 switch_probe, metrics or Metrics(config.domain), clock)
        self.store, self.scheduler, self.client = store, scheduler, client
        self.executor, self.vm_probe, self.switch_probe = executor, vm_probe, switch_probe
        self.metrics, self.clock, self.policy = ctx.metrics, clock, config.policy
        self.lending = Lending(ctx)
        self.borrowing = Borrowing(ctx, self.heartbeat)
        self.repairs = Repairs(ctx, self.lending, self.borrowing)
        self.certs = CertWatch(config, self.metrics, clock)
        if getattr(client, "seen", False) is None:
            client.seen = self.certs.seen
        self.heartbeat_sent: dict[str, float] = {}
        self.last_intent: str = ""
        self.last_compacted: float | None = None
        self._handlers: dict[type, Callable[[Any], Any]] = {
            Request: self.lending.on_request, Offer: self.borrowing.on_advert,
            Accept: self.lending.on_accept, Decline: self.on_decline,
            Reclaim: self.borrowing.on_reclaim, Return: self.lending.on_return,
            Heartbeat: self.on_heartbeat,
        }

    # what callers and tests read and drive
    @property
    def config(self) -> BrokerConfig:
        return self.ctx.config

    @config.setter
    def config(self, config: BrokerConfig) -> None:  # a reload (SIGHUP) swaps it for every part
        self.ctx.config = config

    @property
    def busy(self) -> set[str]:
        return self.ctx.busy

    @property
    def quiet_until(self) -> dict[str, float]:
        return self.ctx.quiet_until

    @property
    def draining(self) -> dict[str, str]:
        """The contracts a lent host of which drains (-> why)."""
        return self.lending.draining_contracts()

    @property
    def loan_busy_since(self) -> dict[str, float]:
        return self.lending.loan_busy_since

    async def borrow(self, wanted: int, borrowed: int) -> list[Contract]:
        return await self.borrowing.borrow(wanted, borrowed)

    async def give_back(self, c: Contract, reason: str) -> Contract:
        return await self.borrowing.give_back(c, reason)

    async def reclaim(self, c: Contract, reason: str) -> Contract:
        return await self.lending.reclaim(c, reason)

    async def reconcile(self, starting: bool = True) -> list[rec.Action]:
        return await self.repairs.reconcile(starting)

    def _count_contracts(self) -> None:
        self.ctx.count_contracts()

    # ================================================================== inbound messages

    async def handle(self, m: Message) -> tuple[int, dict[str, Any]]:
        """Answer one authenticated, validated message: (HTTP status, JSON body)."""
        self.ctx.peer_seen[m.sender] = self.ctx.peer_heard[m.sender] = self.clock()
        handler = self._handlers.get(type(m))
        if handler is None:
            return 400, {"error": f"{m.TYPE} is not sent to a broker unasked", "code": "unexpected"}
        try:
            return await handler(m)
        except IllegalTransition as exc:
            return 409, {"error": str(exc), "code": "illegal_transition"}
        except StaleContract as exc:
            return 409, {"error": str(exc), "code": "stale"}
        except SchedulerError as exc:
            return 503, {"error": f"scheduler: {exc}", "code": "scheduler"}

    async def on_decline(self, m: Decline) -> tuple[int, dict[str, Any]]:
        c = self.store.get(m.contract_id)
        if c is None or c.peer != m.sender:
            return unknown(m.contract_id)
        if c.state is S.PROPOSED:
            self.ctx.drop_proposal(c, f"declined by {m.sender}: {m.reason}")
            return 200, {"state": S.CLOSED.value}
        return 200, {"state": c.state.value}

    async def on_heartbeat(self, m: Heartbeat) -> tuple[int, dict[str, Any]]:
        """Follow the peer's view: the lender mirrors the borrower's provisioning progress;
        either side releases what the other has already closed."""
        for cid, peer_state in m.contracts:
            c = self.store.get(cid)
            if c is None or c.peer != m.sender or c.state.final or c.id in self.busy:
                continue
            step = trade.follow(c.role, c.state, peer_state)
            for to, why in step.steps:
                c = self.ctx.advance(c, to, why)
            if step.end:
                self.repairs.end_after_peer(c, step.end)
            elif step.hold is not None:
                await self.borrowing.hold(c, step.hold)
        # every contract we hold with the sender, closed ones too: the sender ends its side
        # of any we hold closed or do not know (Broker.heartbeat, reconcile.peer_view); a
        # loan we drain is called ``draining`` (the borrower keeps new jobs off it)
        mine = [[c.id, self.lending.word(c)] for c in self.store.contracts(peer=m.sender)]
        busy, busy_hosts = self.borrowing.busy_with(m.sender)
        return 200, {"contracts": mine, "busy": busy, "busy_hosts": busy_hosts}

    # ================================================================== the interval

    async def tick(self) -> None:
        """One interval: reconcile contracts with what runs, then act on the policy's intent,
        then heartbeat every peer (and end what a peer's answer says is over)."""
        snap = await self.ctx.snapshot()
        await self.repairs.reconcile(starting=False, snap=snap)
        now = self.clock()
        state = snap.domain_state()
        everything = self.store.contracts(open_only=True)
        open_ = [c for c in everything if c.id not in self.busy]
        lent = {c.id: c for c in open_ if c.role is Role.LENDER and c.state is S.ACTIVE}
        loans = await self.lending.loans(lent, {c.id for c in everything})
        held = {c.id: c for c in open_ if c.role is Role.BORROWER and c.state is S.ACTIVE}
        asking = any(c.role is Role.BORROWER and c.state in (S.PROPOSED, S.AGREED, S.PROVISIONING)
                     for c in everything)
        drains = self.lending.draining
        r = trade.interval(
            self.policy, state, now,
            lent=[loan for loan in loans if loan.id not in drains],
            draining=[loan for loan in loans if loan.id in drains],
            held=[trade.Holding(c.id, len(c.nodes), all(
                (n := snap.node(name)) is not None and n.idle for name in c.node_names))
                for c in held.values()],
            asking=asking)
        self.last_intent = f"{r.intent.action.value} {r.intent.nodes}".strip()
        taken: dict[str, tuple[list[str], str]] = {}  # contract -> its hosts taken back, why
        for e in r.effects:
            if isinstance(e, trade.TakeBack):
                cid, host = loan_of(e.loan)
                taken.setdefault(cid, ([], e.reason))[0].append(host)
        for cid, (hosts, why) in taken.items():  # all of a contract's hosts: it ends
            self.ctx.busy.add(cid)
            self.ctx.spawn(self.lending.take_back(lent[cid], hosts, why))
        for e in r.effects:
            if isinstance(e, trade.Drain):
                self.lending.drain(str(e.loan), e.reason, now)
            elif isinstance(e, trade.GiveBack):
                self.ctx.spawn(self.borrowing.give_back(held[str(e.holding)], e.reason))
            elif isinstance(e, trade.Ask):
                await self.borrowing.borrow(e.nodes, state.borrowed)
        if r.intent.action is Action.LEND and self.policy.lending.advertise:
            await self.lending.advertise(snap, r.intent, now)
        for peer in self.config.peers:
            await self.heartbeat(peer, idle_every=max(5 * self.config.interval_s, 10.0))
        self._compact(now)

    def _compact(self, now: float) -> None:
        if self.last_compacted is not None and now - self.last_compacted < COMPACT_EVERY_S:
            return
        self.last_compacted = now
        done = self.store.compact(now, self.config.contract_retention_days * 86400.0)
        if done.contracts or done.messages:
            log.info("compacted the store: %d closed contract(s) older than %g days, %d "
                     "message id(s)", done.contracts, self.config.contract_retention_days,
                     done.messages)
            self.ctx.count_contracts()

    async def heartbeat(self, peer: str, idle_every: float | None = None) -> None:
        """Tell the peer the states of our open contracts with it; with none, still say we are
        alive every ``idle_every`` seconds (so a broken pin or route shows before a trade).

        The answer lists every contract the peer holds with us: one of ours it holds closed,
        or does not know, is ended on our side (:func:`reconcile.peer_view`)."""
        open_ = self.store.contracts(open_only=True, peer=peer)
        mine = tuple((c.id, self.lending.word(c)) for c in open_)
        now = self.clock()
        if not (mine or (idle_every is not None
                         and now - self.heartbeat_sent.get(peer, -1e18) >= idle_every)):
            return
        self.heartbeat_sent[peer] = now
        asked = {c.id: c.updated_at for c in open_}
        reply = await self.ctx.send(peer, self.ctx.msg(Heartbeat, peer, contracts=mine))
        view = reply.body.get("contracts") if reply.ok else None
        if not isinstance(view, list):
            return
        # only [id, state] pairs of strings count: the answer is the peer's, not ours to trust
        theirs = {item[0]: item[1] for item in view
                  if isinstance(item, list) and len(item) == 2
                  and isinstance(item[0], str) and isinstance(item[1], str)}
        self.lending.note_busy(peer, reply.body.get("busy"), reply.body.get("busy_hosts"), now)
        for c in open_:  # the lender's word on a loan it drains (or no longer drains)
            if c.role is Role.BORROWER and c.id in theirs and c.id not in self.busy:
                step = trade.follow(c.role, c.state, theirs[c.id])
                if step.hold is not None and not step.end:
                    await self.borrowing.hold(c, step.hold)
        for action in rec.peer_view(self.store.contracts(open_only=True, peer=peer), peer,
                                    asked, theirs, frozenset(self.busy)):
            c = self.store.get(action.contract_id)
            if c is None or c.id in self.busy or c.state.final:
                continue
            log.warning("reconcile: %s", action)
            self.repairs.note(action)
            self.repairs.end_after_peer(c, action.why)

    # ================================================================== status

    def status(self) -> dict[str, Any]:
        snap = self.ctx.last_snapshot
        state = snap.domain_state() if snap else None
        return {
            "domain": self.config.domain,
            "time": self.clock(),
            "demand": state.demand if state else None,
            "need": state.need if state else None,
            "physical": state.physical if state else None,
            "lent": [n.name for n in snap.lent] if snap else [],
            "borrowed": [n.name for n in snap.borrowed] if snap else [],
            "intent": self.last_intent,
            "draining": sorted(self.draining),
            # our loans (<contract>/<host>) the borrower says run a job (a drain waits for these)
            "loans_busy": sorted(self.loan_busy_since),
            "peers": {p: {"last_seen": self.ctx.peer_seen.get(p)} for p in self.config.peers},
            "contracts": [
                {"id": c.id, "role": c.role.value, "peer": c.peer, "state": c.state.value,
                 "nodes": list(c.node_names), "addresses": [a for _n, a in c.addresses],
                 "updated_at": c.updated_at, "reason": c.reason}
                for c in self.store.contracts()
            ],
            "repairs": self.repairs.done[-20:],
            "refusals": [{"peer": r.peer, "role": r.role.value, "count": r.count,
                          "first_at": r.first_at, "last_at": r.last_at, "reason": r.last_reason}
                         for r in self.store.refusals()],
        }

    async def drain(self) -> None:
        """Wait for the steps in flight (tests and a clean stop use it)."""
        while self.ctx.tasks:
            await asyncio.gather(*list(self.ctx.tasks), return_exceptions=True)
