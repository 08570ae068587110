"""The broker of one domain: the interpreter of the trade core's effects.

The trade core (:mod:`broker.negotiation.trade`, over :mod:`broker.policy`) decides what to
borrow, lend, take back, drain and give back; this module observes (scheduler snapshot, clock,
what peers report), feeds the core, and carries its effects out: it talks to peers, persists
every contract step before acting on it, and drives the executor and the scheduler. Blocking
work (scheduler commands, playbooks) runs in threads so the API keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from broker.negotiation import trade
from broker.negotiation.contracts import (
    Contract,
    ContractState,
    IllegalTransition,
    Role,
    vm_node_name,
)
from broker.negotiation.messages import (
    Accept,
    Decline,
    Heartbeat,
    HostOffer,
    Message,
    MessageError,
    Needs,
    Offer,
    Reclaim,
    Request,
    Return,
    Terms,
    from_dict,
    new_id,
)
from broker.policy import Action, HostProperties, Intent, Loan, Requirements
from broker.policy import Terms as PolicyTerms
from broker.policy.reclamation import Mode
from broker.provisioning import Executor
from broker.scheduler import SchedulerAdapter, SchedulerError, Snapshot
from broker.service import reconcile as rec
from broker.service.certwatch import CertWatch
from broker.service.client import PeerClient, Reply
from broker.service.config import BrokerConfig
from broker.service.metrics import Metrics
from broker.service.probes import CommandProbe, ProbeError, free_disk_gb, measure_host, ping_ms
from broker.service.store import StaleContract, Store

COMPACT_EVERY_S = 3600.0  # how often closed contracts past their retention are removed

log = logging.getLogger("broker")
S = ContractState


def _policy_terms(terms: Terms) -> PolicyTerms:
    return PolicyTerms(Mode(terms.mode), terms.lease_s, terms.per_interval)


def _wire_terms(terms: PolicyTerms) -> Terms:
    return Terms(terms.mode.value, float(terms.lease_s), terms.per_interval)


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
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.executor = executor
        self.client = client
        self.vm_probe = vm_probe
        self.switch_probe = switch_probe
        self.metrics = metrics or Metrics(config.domain)
        self.clock = clock
        self.policy = config.policy
        self.busy: set[str] = set()  # contracts with an operation in flight
        # A peer that just turned us down is not asked again before this time (no request storm
        # while its own policy says no).
        self.quiet_until: dict[str, float] = {}
        self.heartbeat_sent: dict[str, float] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.last_snapshot: Snapshot | None = None
        self.last_intent: str = ""
        self.peer_seen: dict[str, float] = {}  # last message from each peer (status shows it)
        # last time each peer was heard from: a message from it, or any answer to ours
        self.peer_heard: dict[str, float] = {}
        self.started_at = clock()
        self.unhealthy_since: dict[str, float] = {}  # borrowed node -> first seen down
        self.certs = CertWatch(config, self.metrics, clock)
        if getattr(client, "seen", False) is None:
            client.seen = self.certs.seen
        self.vm_missing_since: dict[str, float] = {}  # lent VM -> first seen missing
        self.last_compacted: float | None = None
        self.repairs: list[str] = []
        # Lent contracts the core said to drain (id -> why), and since when the borrower has
        # reported a job on each lent contract (from its heartbeat answers).
        self.draining: dict[str, str] = {}
        self.draining_since: dict[str, float] = {}
        self.loan_busy_since: dict[str, float] = {}
        self.limits = rec.Limits(config.node_down_grace_s, config.peer_lost_timeout_s,
                                 config.offer_ttl_s)

    # ================================================================== helpers

    def _advance(self, c: Contract, to: ContractState, reason: str, **changes: Any) -> Contract:
        new, t = c.advance(to, self.clock(), reason, **changes)
        self.store.save(new, t)
        log.info("contract %s (%s, peer %s): %s -> %s: %s", c.id, c.role.value, c.peer,
                 c.state.value, to.value, reason)
        self._count_contracts()
        return new

    def _drop_proposal(self, c: Contract, reason: str) -> None:
        """A proposal ended without an agreement: not kept as a contract, counted per peer."""
        self.store.drop_refused(c, self.clock(), reason)
        log.info("contract %s (%s, peer %s): proposal dropped: %s", c.id, c.role.value, c.peer,
                 reason)
        self._count_contracts()

    def _count_contracts(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for c in self.store.contracts():
            key = (c.state.value, c.role.value)
            counts[key] = counts.get(key, 0) + 1
        self.metrics.set_contracts(counts)

    def _msg(self, cls: type[Message], peer: str, **fields: Any) -> Any:
        return cls(id=new_id("m"), sender=self.config.domain, recipient=peer,
                   sent_at=self.clock(), **fields)

    async def _send(self, peer_name: str, message: Message) -> Reply:
        peer = self.config.peers.get(peer_name)
        if peer is None:
            return Reply(0, {"error": f"{peer_name} is not a configured peer"})
        reply = await self.client.send(peer, message)
        if reply.status != 0:
            self.peer_heard[peer_name] = self.clock()
        return reply

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background step failed: %s", task.exception(), exc_info=task.exception())

    def _vars(self, c: Contract) -> dict[str, Any]:
        offered = {h.name: h for h in c.offered}
        ips = c.address_of
        vms = []
        for host, node in c.nodes:
            h = offered.get(host)
            vm = {"name": node, "host": host,
                  "address": h.address if h else host, "account": h.account if h else ""}
            if node in ips:
                vm["ip"] = ips[node]  # "10.210.1.70/24"; without it borrow.yml derives one
            vms.append(vm)
        return {
            "trade_contract_id": c.id,
            "trade_role": c.role.value,
            "trade_borrower": c.borrower,
            "trade_lender": c.lender,
            "trade_vms": vms,
            "trade_needs": asdict(c.needs),
        }

    async def _snapshot(self) -> Snapshot:
        snap = await asyncio.to_thread(self.scheduler.snapshot)
        self.last_snapshot = snap
        state = snap.domain_state()
        self.metrics.demand.set(state.demand)
        self.metrics.need.set(state.need)
        for kind, value in (("physical", state.physical), ("lent", state.lent),
                            ("borrowed", state.borrowed)):
            self.metrics.nodes.labels(kind=kind).set(value)
        return snap

    # ================================================================== inbound messages

    async def handle(self, m: Message) -> tuple[int, dict[str, Any]]:
        """Answer one authenticated, validated message: (HTTP status, JSON body)."""
        self.peer_seen[m.sender] = self.peer_heard[m.sender] = self.clock()
        handler = {
            Request: self.on_request, Offer: self.on_advert, Accept: self.on_accept,
            Decline: self.on_decline,
            Reclaim: self.on_reclaim, Return: self.on_return, Heartbeat: self.on_heartbeat,
        }.get(type(m))
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

    def _own(self, contract_id: str, role: Role, peer: str) -> Contract | None:
        c = self.store.get(contract_id)
        if c is None or c.role is not role or c.peer != peer:
            return None
        return c

    @staticmethod
    def _unknown(contract_id: str) -> tuple[int, dict[str, Any]]:
        return 404, {"error": f"unknown contract {contract_id}", "code": "unknown_contract"}

    async def on_request(self, m: Request) -> tuple[int, dict[str, Any]]:
        existing = self.store.get(m.contract_id)
        if existing is not None:
            if existing.role is not Role.LENDER or existing.borrower != m.sender:
                return 409, {"error": f"contract id {m.contract_id} is taken", "code": "id_taken"}
            if existing.state is S.PROPOSED:
                return 200, {"reply": self._msg(Offer, m.sender, contract_id=existing.id,
                                                hosts=existing.offered, terms=existing.terms).to_dict()}
            return 409, {"error": f"contract {existing.id} is {existing.state.value}",
                         "code": "not_proposed"}
        decline = self._msg(Decline, m.sender, contract_id=m.contract_id, reason="")
        refused = trade.refusal(self.policy, m.sender)
        if refused:
            return 200, {"reply": replace(decline, reason=refused).to_dict()}
        now = self.clock()
        snap = await self._snapshot()
        reserved = {h for c in self.store.contracts(open_only=True) if c.role is Role.LENDER
                    for h in ([o.name for o in c.offered] if c.state is S.PROPOSED else c.host_names)}
        pending = sum(1 for c in self.store.contracts(open_only=True)
                      if c.role is Role.LENDER and c.state is S.PROPOSED for _ in c.offered)
        idle = {n.name: n for n in snap.idle_physical}
        hosts = [h for h in self.config.lending_hosts if h.node in idle and h.node not in reserved]
        answer = trade.answer(self.policy, snap.domain_state(), m.sender, m.nodes, now,
                              available=len(hosts), pending=pending)
        if not answer.ok:
            return 200, {"reply": replace(decline, reason=answer.reason).to_dict()}
        # every idle host measured now; those that meet the request's needs are offered
        measured = []
        for h in hosts:
            node = idle[h.node]
            memory = node.memory_mb
            if node.free_memory_mb is not None:
                memory = min(memory, node.free_memory_mb) if memory else node.free_memory_mb
            measured.append(asyncio.to_thread(measure_host, h, node.cpus, memory,
                                              self.config.site, m.sender))
        measured = list(await asyncio.gather(*measured))
        fit, unfit = trade.suited(Requirements(m.needs.cpus, m.needs.memory_mb, m.needs.disk_gb),
                                  [HostProperties(o.cpus, o.memory_mb, o.disk_gb) for o in measured])
        answer = trade.answer(self.policy, snap.domain_state(), m.sender, m.nodes, now,
                              available=len(fit), pending=pending, unfit=unfit)
        if not answer.ok:
            return 200, {"reply": replace(decline, reason=answer.reason).to_dict()}
        offers = [measured[i] for i in fit[:answer.count]]
        terms = _wire_terms(self.policy.reclamation.terms)
        c, t = Contract.propose(m.contract_id, Role.LENDER, m.sender, self.config.domain,
                                m.nodes, m.needs, terms, now)
        c = replace(c, offered=tuple(offers))
        self.store.create(c, t)
        self._count_contracts()
        log.info("offered %s to %s (contract %s)", ", ".join(o.name for o in offers), m.sender, c.id)
        return 200, {"reply": self._msg(Offer, m.sender, contract_id=c.id, hosts=c.offered,
                                        terms=terms).to_dict()}

    async def on_advert(self, m: Offer) -> tuple[int, dict[str, Any]]:
        """Hosts a lender offers unasked (an advert): taken without asking when our own
        interval would ask for nodes now (:func:`trade.take_advert`), else refused; either
        way the answer says which."""
        if self.store.get(m.contract_id) is not None:
            return 409, {"error": f"contract id {m.contract_id} is taken; advertise under a new "
                         "one", "code": "id_taken"}
        now = self.clock()
        snap = await self._snapshot()
        asking = any(c.role is Role.BORROWER and c.state in (S.PROPOSED, S.AGREED, S.PROVISIONING)
                     for c in self.store.contracts(open_only=True))
        choice = trade.take_advert(self.policy, snap.domain_state(),
                                   self._candidates(m.contract_id, m.sender, m), now,
                                   asking=asking)
        hosts: list[HostOffer] = [cand.ref for cand in choice.taken.get(m.contract_id, ())]
        if not hosts:
            why = choice.refused.get(m.contract_id, "nothing taken")
            log.info("advert %s of %s not taken: %s", m.contract_id, m.sender, why)
            return 200, {"state": "declined", "reason": why}
        c, t = Contract.propose(m.contract_id, Role.BORROWER, self.config.domain, m.sender,
                                len(hosts), Needs(**self.config.needs), m.terms, now)
        self.store.create(c, t)
        self._count_contracts()
        log.info("taking %s advertised by %s (contract %s)", ", ".join(h.name for h in hosts),
                 m.sender, c.id)
        taken = await self._take(m.sender, c, m, hosts)
        if taken is None:
            got = self.store.get(c.id)
            return 200, {"state": "declined",
                         "reason": got.reason if got is not None else "not taken"}
        return 200, {"state": taken.state.value, "hosts": [h for h, _n in taken.nodes]}

    async def advertise(self, snap: Snapshot, intent: Intent, now: float) -> None:
        """Offer idle hosts unasked to a trusted peer (:func:`trade.adverts`): the proposal is
        kept as a lender contract, as an answered request's, until it is accepted, refused or
        expires."""
        open_ = [c for c in self.store.contracts(open_only=True) if c.role is Role.LENDER]
        proposing = {c.borrower for c in open_ if c.state is S.PROPOSED}
        peers = [p for p in sorted(self.config.peers)
                 if p not in proposing and now >= self.quiet_until.get(f"advert:{p}", 0.0)]
        if not peers:
            return
        reserved = {h for c in open_
                    for h in ([o.name for o in c.offered] if c.state is S.PROPOSED else c.host_names)}
        pending = sum(len(c.offered) for c in open_ if c.state is S.PROPOSED)
        idle = {n.name: n for n in snap.idle_physical}
        hosts = [h for h in self.config.lending_hosts if h.node in idle and h.node not in reserved]
        for ad in trade.adverts(self.policy, intent, peers, now, available=len(hosts),
                                pending=pending):
            measured = []
            for h in hosts[:ad.count]:
                node = idle[h.node]
                memory = node.memory_mb
                if node.free_memory_mb is not None:
                    memory = min(memory, node.free_memory_mb) if memory else node.free_memory_mb
                measured.append(asyncio.to_thread(measure_host, h, node.cpus, memory,
                                                  self.config.site, ad.peer))
            offered = tuple(await asyncio.gather(*measured))
            terms = _wire_terms(self.policy.reclamation.terms)
            c, t = Contract.propose(new_id(self.config.domain), Role.LENDER, ad.peer,
                                    self.config.domain, len(offered), Needs(), terms, now)
            c = replace(c, offered=offered)
            self.store.create(c, t)
            self._count_contracts()
            log.info("advertising %s to %s (contract %s)", ", ".join(o.name for o in offered),
                     ad.peer, c.id)
            reply = await self._send(ad.peer, self._msg(Offer, ad.peer, contract_id=c.id,
                                                        hosts=offered, terms=terms))
            if reply.ok and reply.body.get("state") in ("agreed", "provisioning", "active"):
                continue  # its accept has come (or comes) to on_accept
            why = reply.body.get("reason") if reply.ok else reply.error
            why = why if isinstance(why, str) else "no answer"
            self.quiet_until[f"advert:{ad.peer}"] = now + trade.rest_after_decline(
                self.config.interval_s)
            current = self.store.get(c.id)
            if current is not None and current.state is S.PROPOSED:
                self._drop_proposal(current, f"{ad.peer} did not take the advert: {why[:200]}")

    async def on_accept(self, m: Accept) -> tuple[int, dict[str, Any]]:
        c = self._own(m.contract_id, Role.LENDER, m.sender)
        if c is None:
            return self._unknown(m.contract_id)
        if c.state is not S.PROPOSED:
            if c.state is S.AGREED and c.host_names == m.hosts:
                return 200, {"state": c.state.value, "nodes": [list(n) for n in c.nodes]}
            return 409, {"error": f"contract {c.id} is {c.state.value}, not proposed",
                         "code": "not_proposed"}
        if self.clock() - c.created_at > self.config.offer_ttl_s:
            self._drop_proposal(c, "offer expired before it was accepted")
            return 409, {"error": f"offer {c.id} expired; ask again", "code": "expired"}
        offered = {h.name for h in c.offered}
        unknown = [h for h in m.hosts if h not in offered]
        if unknown:
            return 400, {"error": f"host(s) {', '.join(unknown)} were not offered in {c.id}",
                         "code": "not_offered"}
        nodes = tuple((h, vm_node_name(c.borrower, c.id, i)) for i, h in enumerate(m.hosts))
        c = self._advance(c, S.AGREED, f"borrower accepted {', '.join(m.hosts)}", nodes=nodes)
        for host in c.host_names:
            await asyncio.to_thread(self.scheduler.lend, host, c.id)
        return 200, {"state": c.state.value, "nodes": [list(n) for n in c.nodes]}

    async def on_decline(self, m: Decline) -> tuple[int, dict[str, Any]]:
        c = self.store.get(m.contract_id)
        if c is None or c.peer != m.sender:
            return self._unknown(m.contract_id)
        if c.state is S.PROPOSED:
            self._drop_proposal(c, f"declined by {m.sender}: {m.reason}")
            return 200, {"state": S.CLOSED.value}
        return 200, {"state": c.state.value}

    async def on_reclaim(self, m: Reclaim) -> tuple[int, dict[str, Any]]:
        """The lender takes its machines back: our nodes go down first (jobs requeued)."""
        c = self._own(m.contract_id, Role.BORROWER, m.sender)
        if c is None:
            return self._unknown(m.contract_id)
        if c.state.final:
            return 200, {"state": c.state.value, "requeued": []}
        if c.state is S.PROVISIONING or c.id in self.busy:
            return 409, {"error": f"contract {c.id} is being provisioned; retry shortly",
                         "code": "busy"}
        self.busy.add(c.id)
        try:
            if c.state is S.PROPOSED:
                self._drop_proposal(c, f"lender withdrew: {m.reason}")
                return 200, {"state": S.CLOSED.value, "requeued": []}
            if c.state is not S.RECLAIMING:
                c = self._advance(c, S.RECLAIMING, f"lender reclaims: {m.reason}")
            requeued = await self._release_borrowed(c)
            c = self._advance(c, S.CLOSED, f"reclaimed by {m.sender}; requeued {len(requeued)} job(s)")
            return 200, {"state": c.state.value, "requeued": requeued}
        finally:
            self.busy.discard(c.id)

    async def on_return(self, m: Return) -> tuple[int, dict[str, Any]]:
        """The borrower gives machines back: stop its VMs on our hosts, put them in service."""
        c = self._own(m.contract_id, Role.LENDER, m.sender)
        if c is None:
            return self._unknown(m.contract_id)
        if c.state.final:
            return 200, {"state": c.state.value}
        if c.state is S.PROPOSED:
            self._drop_proposal(c, f"borrower withdrew: {m.reason}")
            return 200, {"state": S.CLOSED.value}
        if c.state is not S.RECLAIMING:
            c = self._advance(c, S.RECLAIMING, f"returned by {m.sender}: {m.reason}")
        if c.id not in self.busy:
            self.busy.add(c.id)
            self._spawn(self._finish_lender_release(c))
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
                c = self._advance(c, to, why)
            if step.end:
                self._end_after_peer(c, step.end)
            elif step.hold is not None:
                await self._hold(c, step.hold)
        # every contract we hold with the sender, closed ones too: the sender ends its side
        # of any we hold closed or do not know (Broker.heartbeat, reconcile.peer_view); a
        # loan we drain is called ``draining`` (the borrower keeps new jobs off it)
        mine = [[c.id, self._word(c)] for c in self.store.contracts(peer=m.sender)]
        return 200, {"contracts": mine, "busy": self._busy_borrowed(m.sender)}

    def _word(self, c: Contract) -> str:
        return trade.word(c.state, c.role is Role.LENDER and c.id in self.draining)

    async def _hold(self, c: Contract, hold: bool) -> None:
        """Keep new jobs off the nodes of a borrowed contract its lender drains (``hold``), or
        let them take jobs again; nodes already so (by the last snapshot) are left alone."""
        snap = self.last_snapshot
        mark = self.scheduler.draining_reason
        for name in c.node_names:
            n = snap.node(name) if snap is not None else None
            if n is None or n.reason.startswith(mark) == hold:
                continue
            try:
                if hold:
                    await asyncio.to_thread(self.scheduler.hold, name, c.id)
                    log.info("contract %s: the lender drains it; %s takes no new job", c.id, name)
                else:
                    await asyncio.to_thread(self.scheduler.unhold, name)
                    log.info("contract %s: the lender no longer drains it; %s takes jobs again",
                             c.id, name)
            except SchedulerError as exc:
                log.warning("contract %s: %s", c.id, exc)

    def _busy_borrowed(self, lender: str) -> list[str]:
        """Our contracts with ``lender`` whose nodes run a job now (by the last snapshot): the
        lender drains these instead of preempting them."""
        snap = self.last_snapshot
        if snap is None:
            return []
        busy = []
        for c in self.store.contracts(open_only=True, peer=lender):
            if c.role is Role.BORROWER and any(
                    (n := snap.node(name)) is not None and n.busy for name in c.node_names):
                busy.append(c.id)
        return busy

    def _end_after_peer(self, c: Contract, reason: str) -> None:
        """The peer has ended the contract: end our side (borrower: nodes down and deleted;
        lender: VMs stopped, hosts resumed); no need to tell the peer."""
        c = self._advance(c, S.RECLAIMING, reason)
        self.busy.add(c.id)
        if c.role is Role.BORROWER:
            self._spawn(self._finish_borrower_release(c, tell_lender=False))
        else:
            self._spawn(self._finish_lender_release(c))

    # ================================================================== borrowing

    async def borrow(self, wanted: int, borrowed: int) -> list[Contract]:
        """Ask every peer for ``wanted`` nodes, take the offers that fit best, agree, provision."""
        if wanted <= 0 or not self.config.peers:
            return []
        pool = self.config.vm_pool
        if pool is not None:
            free = pool.free(self.store.addresses_in_use())
            if free <= 0:
                log.warning("need %d node(s), but the VM address pool %s has no free address "
                            "(all held by open contracts); not borrowing", wanted, pool)
                return []
            if free < wanted:
                log.warning("need %d node(s), but the VM address pool %s has %d free "
                            "address(es); asking for %d", wanted, pool, free, free)
                wanted = free
        now = self.clock()
        needs = Needs(**self.config.needs)
        asks: list[tuple[str, Contract, Request]] = []
        for name in sorted(self.config.peers):
            if now < self.quiet_until.get(name, 0.0):
                continue
            c, t = Contract.propose(new_id(self.config.domain), Role.BORROWER, self.config.domain,
                                    name, wanted, needs, Terms(), now)
            self.store.create(c, t)
            asks.append((name, c, self._msg(Request, name, contract_id=c.id, nodes=wanted,
                                            needs=needs, terms=Terms())))
        if not asks:
            return []
        self._count_contracts()
        log.info("need %d node(s): asking %s", wanted, ", ".join(a[0] for a in asks))
        replies = await asyncio.gather(*(self._send(name, req) for name, _c, req in asks))
        candidates: list[trade.Candidate] = []
        offers: dict[str, Offer] = {}
        for (name, c, _req), reply in zip(asks, replies):
            offer = self._reply_message(reply)
            if not isinstance(offer, Offer) or offer.contract_id != c.id:
                why = offer.reason if isinstance(offer, Decline) else (reply.error or "no offer")
                self._drop_proposal(c, f"{name} did not offer: {why}")
                self.quiet_until[name] = now + trade.rest_after_decline(self.config.interval_s)
                continue
            offers[c.id] = offer
            candidates.extend(self._candidates(c.id, name, offer))
        fitting, turned = trade.screen(self.policy, candidates, borrowed, now)
        for cand, why in turned:
            log.info("turned away %s of %s: %s", cand.ref.name, offers[str(cand.offer)].sender, why)
        if len(fitting) > wanted:
            # More hosts fit than we need: rank by the RTT from here (this domain's side of the
            # virtual network) to each host, measured now; the lender's figure is from its side.
            rtts = await asyncio.gather(*(asyncio.to_thread(ping_ms, cand.ref.address)
                                          for cand in fitting))
            fitting = [replace(cand, rank=(rtt if rtt is not None else 1e9, *cand.rank[1:]))
                       for rtt, cand in zip(rtts, fitting)]
        choice = trade.choose(fitting, wanted, offers=list(offers),
                              co_located=self.policy.borrowing.location.co_located)
        agreed = []
        for name, c, _req in asks:
            if c.id not in offers:
                continue
            offer = offers[c.id]
            hosts: list[HostOffer] = [cand.ref for cand in choice.taken.get(c.id, ())]
            if not hosts:
                why = choice.refused[c.id]
                self._drop_proposal(c, why)
                await self._send(name, self._msg(Decline, name, contract_id=c.id, reason=why))
                continue
            taken = await self._take(name, c, offer, hosts)
            if taken is not None:
                agreed.append(taken)
        return agreed

    async def _take(self, name: str, c: Contract, offer: Offer,
                    hosts: list[HostOffer]) -> Contract | None:
        """Agree on ``hosts`` of ``offer`` (with a VM address each, from the pool), tell the
        lender (``accept``) and provision; None when it came to nothing."""
        pool = self.config.vm_pool
        if pool is not None:
            free = pool.free(self.store.addresses_in_use())
            if free < len(hosts):
                log.warning("contract %s: the VM address pool %s has %d free address(es) "
                            "for %d host(s); taking %d", c.id, pool, free, len(hosts), free)
                hosts = hosts[:max(free, 0)]
            if not hosts:
                why = f"no free address in the VM address pool {pool}"
                self._drop_proposal(c, why)
                await self._send(name, self._msg(Decline, name, contract_id=c.id, reason=why))
                return None
        nodes = tuple((h.name, vm_node_name(self.config.domain, c.id, i)) for i, h in enumerate(hosts))
        with self.store.transaction():  # the VMs' addresses are taken with the agreement
            addresses: tuple[tuple[str, str], ...] = ()
            if pool is not None:
                ips = pool.allocate(len(nodes), self.store.addresses_in_use())
                addresses = tuple(zip((n for _h, n in nodes), ips))
            c = self._advance(c, S.AGREED, f"accepting {', '.join(h.name for h in hosts)} from {name}",
                              offered=offer.hosts, terms=offer.terms, nodes=nodes,
                              addresses=addresses)
        if addresses:
            log.info("contract %s: VM addresses %s", c.id,
                     ", ".join(f"{n} {a}" for n, a in addresses))
        reply = await self._send(name, self._msg(Accept, name, contract_id=c.id,
                                                 hosts=tuple(h.name for h in hosts)))
        if not reply.ok:
            self._advance(c, S.CLOSED, f"{name} refused the acceptance: {reply.error}")
            return None
        self.busy.add(c.id)
        self._spawn(self.provision(c))
        return c

    @staticmethod
    def _candidates(cid: str, lender: str, offer: Offer) -> list[trade.Candidate]:
        """The hosts of an offer as the trade core sees them (a host whose RTT its lender
        could not measure fails a maximum-RTT rule, and ranks last)."""
        return [trade.Candidate(cid, HostProperties(
                                    h.cpus, h.memory_mb, h.disk_gb,
                                    h.rtt_ms if h.rtt_ms is not None else math.inf, h.site),
                                _policy_terms(offer.terms),
                                (h.rtt_ms if h.rtt_ms is not None else 1e9, -h.cpus, -h.memory_mb),
                                ref=h, peer=lender)
                for h in offer.hosts]

    @staticmethod
    def _reply_message(reply: Reply) -> Message | None:
        if not reply.ok or not isinstance(reply.body.get("reply"), dict):
            return None
        try:
            return from_dict(reply.body["reply"])
        except MessageError as exc:
            log.warning("peer's reply is not a valid message: %s", exc.reason)
            return None

    async def provision(self, c: Contract) -> Contract:
        """borrow.yml, then admit each VM to our scheduler; on failure roll back, mark failed."""
        self.busy.add(c.id)
        try:
            agreed_at = c.updated_at
            c = self._advance(c, S.PROVISIONING, "running the borrow playbook")
            await self.heartbeat(c.lender)
            variables = self._vars(c)
            result = await asyncio.to_thread(self.executor.provision, variables, c.id)
            self.metrics.playbooks.labels(playbook="borrow", result="ok" if result.ok else "failed").inc()
            if not result.ok:
                # a VM that booted before the failure may have joined the scheduler: take it out
                await self._release_borrowed(c)
                c = self._advance(c, S.FAILED, f"borrow playbook: {result.summary()}")
                await self._send(c.lender, self._msg(Return, c.lender, contract_id=c.id,
                                                     reason="provisioning failed"))
                return c
            try:
                for node in c.node_names:
                    await asyncio.to_thread(self.scheduler.admit, node,
                                            self.config.executor.admit_timeout_s)
            except SchedulerError as exc:
                await self._release_borrowed(c)
                undo = await asyncio.to_thread(self.executor.reclaim,
                                               {**variables, "trade_rollback": True}, c.id)
                c = self._advance(c, S.FAILED, f"admission failed: {exc}; "
                                  f"rollback {'done' if undo.ok else 'FAILED'}")
                await self._send(c.lender, self._msg(Return, c.lender, contract_id=c.id,
                                                     reason="admission failed"))
                return c
            c = self._advance(c, S.ACTIVE, f"{', '.join(c.node_names)} joined the scheduler")
            self.metrics.trade_seconds.observe(self.clock() - agreed_at)
            await self.heartbeat(c.lender)
            return c
        finally:
            self.busy.discard(c.id)

    async def _release_borrowed(self, c: Contract) -> list[str]:
        """Our side of ending a loan: each node down (jobs requeued), then deleted; switch
        peers no other contract needs are removed."""
        requeued: list[str] = []
        for node in c.node_names:
            result = await asyncio.to_thread(self.scheduler.remove, node, f"viocluster-reclaim:{c.id}")
            requeued.extend(result.requeued)
        if self.switch_probe is not None and self.switch_probe.enabled:
            keep = {h for o in self.store.contracts(open_only=True)
                    if o.id != c.id and o.role is Role.BORROWER for h in o.host_names}
            for host in sorted(set(c.host_names) - keep):
                try:
                    await asyncio.to_thread(self.switch_probe.remove, host)
                except ProbeError as exc:
                    log.warning("%s", exc)
        return requeued

    async def give_back(self, c: Contract, reason: str) -> Contract:
        """Return borrowed machines: nodes out of our scheduler, then tell the lender."""
        self.busy.add(c.id)
        try:
            c = self._advance(c, S.RECLAIMING, f"returning: {reason}")
        except (IllegalTransition, StaleContract):
            self.busy.discard(c.id)
            raise
        return await self._finish_borrower_release(c, tell_lender=True)

    async def _finish_borrower_release(self, c: Contract, tell_lender: bool) -> Contract:
        self.busy.add(c.id)
        try:
            await self._release_borrowed(c)
            if not tell_lender:
                return self._advance(c, S.CLOSED, "nodes out; the lender had ended its side")
            reply = await self._send(c.lender, self._msg(Return, c.lender, contract_id=c.id,
                                                         reason=c.reason or "returned"))
            if reply.ok:
                return self._advance(c, S.CLOSED, "returned to the lender")
            if reply.status == 404:
                return self._advance(c, S.CLOSED, "nodes out; the lender holds no such contract")
            # Our side is done (nodes down and deleted). The lender learns the contract is
            # closed from the answer to its next heartbeat, or takes its hosts back once it
            # has not heard from us for its peer_lost_timeout_s.
            log.warning("contract %s: the lender was not told (%s); it learns at the next "
                        "contact", c.id, reply.error)
            return self._advance(c, S.CLOSED, f"nodes out; lender not told yet ({reply.error[:120]})")
        finally:
            self.busy.discard(c.id)

    # ================================================================== lending

    async def reclaim(self, c: Contract, reason: str) -> Contract:
        """Take lent machines back: the borrower requeues first, then the VMs are killed."""
        self.busy.add(c.id)
        start = time.monotonic()
        if c.state is not S.RECLAIMING:
            try:
                c = self._advance(c, S.RECLAIMING, reason)
            except (IllegalTransition, StaleContract):
                self.busy.discard(c.id)
                raise
        reply = await self._send(c.borrower, self._msg(Reclaim, c.borrower, contract_id=c.id,
                                                       reason=reason))
        if not reply.ok:
            log.warning("contract %s: borrower did not confirm the reclaim (%s); stopping the "
                        "VMs anyway", c.id, reply.error)
        return await self._finish_lender_release(c, started=start)

    async def _finish_lender_release(self, c: Contract, started: float | None = None) -> Contract:
        """Stop the contract's VMs and put our hosts back in service.

        With a VM probe configured, its ``remove`` command kills each VM at once (the fast
        path: a reclaim must not wait for a playbook to start); ``reclaim.yml`` then runs in
        any case and cleans up what is left (COW, config directory, runtime switch peers).
        """
        self.busy.add(c.id)
        fast = self.vm_probe is not None and self.vm_probe.enabled
        try:
            if fast:
                for node in c.node_names:
                    try:
                        await asyncio.to_thread(self.vm_probe.remove, node)
                    except ProbeError as exc:
                        log.warning("contract %s: fast VM stop failed (%s); the playbook will", c.id, exc)
                if started is not None:
                    self.metrics.reclaim_seconds.observe(time.monotonic() - started)
                    log.info("contract %s: VMs stopped %.2f s after the reclaim began", c.id,
                             time.monotonic() - started)
            result = await asyncio.to_thread(self.executor.reclaim, self._vars(c), c.id)
            if started is not None and not fast:
                self.metrics.reclaim_seconds.observe(time.monotonic() - started)
            self.metrics.playbooks.labels(playbook="reclaim", result="ok" if result.ok else "failed").inc()
            for host in c.host_names:
                try:
                    await asyncio.to_thread(self.scheduler.unlend, host)
                except SchedulerError as exc:  # a dead host: reconciliation resumes it later
                    log.warning("contract %s: cannot put %s back in service yet: %s", c.id, host, exc)
            if not result.ok:
                return self._advance(c, S.FAILED, f"reclaim playbook: {result.summary()}")
            return self._advance(c, S.CLOSED, "VMs stopped, hosts back in service")
        finally:
            self.busy.discard(c.id)

    # ================================================================== the interval

    async def tick(self) -> None:
        """One interval: reconcile contracts with what runs, then act on the policy's intent,
        then heartbeat every peer (and end what a peer's answer says is over)."""
        snap = await self._snapshot()
        await self.reconcile(starting=False, snap=snap)
        now = self.clock()
        state = snap.domain_state()
        everything = self.store.contracts(open_only=True)
        open_ = [c for c in everything if c.id not in self.busy]
        lent = {c.id: c for c in open_ if c.role is Role.LENDER and c.state is S.ACTIVE}
        self.draining = {cid: why for cid, why in self.draining.items() if cid in lent}
        self.draining_since = {k: v for k, v in self.draining_since.items() if k in self.draining}
        known = {c.id for c in everything}
        self.loan_busy_since = {k: v for k, v in self.loan_busy_since.items() if k in known}
        disk = await self._free_disk(list(lent.values()))
        loans = [Loan(c.id, c.borrower, c.updated_at, self.loan_busy_since.get(c.id),
                      self.draining_since.get(c.id), disk.get(c.id))
                 for c in lent.values()]
        held = {c.id: c for c in open_ if c.role is Role.BORROWER and c.state is S.ACTIVE}
        asking = any(c.role is Role.BORROWER and c.state in (S.PROPOSED, S.AGREED, S.PROVISIONING)
                     for c in everything)
        r = trade.interval(
            self.policy, state, now,
            lent=[l for l in loans if l.id not in self.draining],
            draining=[l for l in loans if l.id in self.draining],
            held=[trade.Holding(c.id, len(c.nodes), all(
                (n := snap.node(name)) is not None and n.idle for name in c.node_names))
                for c in held.values()],
            asking=asking)
        self.last_intent = f"{r.intent.action.value} {r.intent.nodes}".strip()
        for e in r.effects:
            if isinstance(e, trade.TakeBack):
                self.draining.pop(str(e.loan), None)
                self.draining_since.pop(str(e.loan), None)
                self._spawn(self.reclaim(lent[str(e.loan)], e.reason))
            elif isinstance(e, trade.Drain):
                log.info("contract %s: draining (%s): it comes back when its job ends", e.loan,
                         e.reason)
                self.draining[str(e.loan)] = e.reason
                self.draining_since[str(e.loan)] = now
            elif isinstance(e, trade.GiveBack):
                self._spawn(self.give_back(held[str(e.holding)], e.reason))
            elif isinstance(e, trade.Ask):
                await self.borrow(e.nodes, state.borrowed)
        if r.intent.action is Action.LEND and self.policy.lending.advertise:
            await self.advertise(snap, r.intent, now)
        for peer in self.config.peers:
            await self.heartbeat(peer, idle_every=max(5 * self.config.interval_s, 10.0))
        self._compact(now)

    async def _free_disk(self, loans: list[Contract]) -> dict[str, float]:
        """The least free disk of each loan's hosts (where the COWs go), when the lending
        policy watches it; a host that cannot be measured tells nothing."""
        if self.policy.lending.min_free_disk_gb is None or not loans:
            return {}
        hosts = {h.node: h for h in self.config.lending_hosts}
        names = sorted({n for c in loans for n in c.host_names if n in hosts})
        found = await asyncio.gather(*(asyncio.to_thread(free_disk_gb, hosts[n]) for n in names))
        free = {n: gb for n, gb in zip(names, found) if gb is not None}
        out = {}
        for c in loans:
            known = [free[n] for n in c.host_names if n in free]
            if known:
                out[c.id] = float(min(known))
        return out

    def _compact(self, now: float) -> None:
        if self.last_compacted is not None and now - self.last_compacted < COMPACT_EVERY_S:
            return
        self.last_compacted = now
        done = self.store.compact(now, self.config.contract_retention_days * 86400.0)
        if done.contracts or done.messages:
            log.info("compacted the store: %d closed contract(s) older than %g days, %d "
                     "message id(s)", done.contracts, self.config.contract_retention_days,
                     done.messages)
            self._count_contracts()

    async def heartbeat(self, peer: str, idle_every: float | None = None) -> None:
        """Tell the peer the states of our open contracts with it; with none, still say we are
        alive every ``idle_every`` seconds (so a broken pin or route shows before a trade).

        The answer lists every contract the peer holds with us: one of ours it holds closed,
        or does not know, is ended on our side (:func:`reconcile.peer_view`)."""
        open_ = self.store.contracts(open_only=True, peer=peer)
        mine = tuple((c.id, self._word(c)) for c in open_)
        now = self.clock()
        if not (mine or (idle_every is not None
                         and now - self.heartbeat_sent.get(peer, -1e18) >= idle_every)):
            return
        self.heartbeat_sent[peer] = now
        asked = {c.id: c.updated_at for c in open_}
        reply = await self._send(peer, self._msg(Heartbeat, peer, contracts=mine))
        view = reply.body.get("contracts") if reply.ok else None
        if not isinstance(view, list):
            return
        # only [id, state] pairs of strings count: the answer is the peer's, not ours to trust
        theirs = {item[0]: item[1] for item in view
                  if isinstance(item, list) and len(item) == 2
                  and isinstance(item[0], str) and isinstance(item[1], str)}
        self._note_busy(peer, reply.body.get("busy"), now)
        for c in open_:  # the lender's word on a loan it drains (or no longer drains)
            if c.role is Role.BORROWER and c.id in theirs and c.id not in self.busy:
                step = trade.follow(c.role, c.state, theirs[c.id])
                if step.hold is not None and not step.end:
                    await self._hold(c, step.hold)
        for action in rec.peer_view(self.store.contracts(open_only=True, peer=peer), peer,
                                    asked, theirs, frozenset(self.busy)):
            c = self.store.get(action.contract_id)
            if c is None or c.id in self.busy or c.state.final:
                continue
            log.warning("reconcile: %s", action)
            self._note_repair(action)
            self._end_after_peer(c, action.why)

    def _note_busy(self, peer: str, busy: Any, now: float) -> None:
        """The borrower's word on which of our loans to it run a job (a list of contract ids;
        anything else, or an older peer that does not say, counts as no job)."""
        said = {b for b in busy if isinstance(b, str)} if isinstance(busy, list) else set()
        for c in self.store.contracts(open_only=True, peer=peer):
            if c.role is not Role.LENDER:
                continue
            if c.id in said:
                self.loan_busy_since.setdefault(c.id, now)
            else:
                self.loan_busy_since.pop(c.id, None)

    async def _finish_reclaim(self, c: Contract) -> Contract:
        if c.role is Role.BORROWER:
            return await self._finish_borrower_release(c, tell_lender=True)
        return await self.reclaim(c, c.reason or "finishing an interrupted reclaim")

    # ================================================================== reconciliation

    def _note_repair(self, action: rec.Action) -> None:
        self.repairs.append(str(action))
        del self.repairs[:-100]
        self.metrics.repairs.labels(kind=action.kind).inc()

    async def observe(self, snap: Snapshot | None = None) -> rec.Observed:
        """What runs now: the scheduler's nodes (with their state), VMs, switch peers, and
        since when each fault has lasted and each peer was last heard."""
        at = self.clock()
        if snap is None:
            snap = await self._snapshot()
        vms = switch = None
        for name, probe in (("vms", self.vm_probe), ("switch", self.switch_probe)):
            if probe is None:
                continue
            try:
                found = await asyncio.to_thread(probe.list)
            except ProbeError as exc:
                log.error("reconciliation cannot see everything: %s", exc)
                continue
            if name == "vms":
                vms = found
            else:
                switch = found
        now = self.clock()
        unhealthy = {n.name for n in snap.borrowed if n.down_or_not_responding}
        self.unhealthy_since = rec.track(self.unhealthy_since, unhealthy, now)
        if vms is not None:  # a probe that failed tells nothing about missing VMs
            missing = rec.missing_vms(self.store.contracts(open_only=True), vms)
            self.vm_missing_since = rec.track(self.vm_missing_since, missing, now)
        return rec.Observed(
            at=at,
            borrowed_nodes=frozenset(n.name for n in snap.borrowed),
            lent_nodes=frozenset(n.name for n in snap.lent),
            vms=vms,
            switch_peers=switch,
            unhealthy_since=dict(self.unhealthy_since),
            dead_nodes=frozenset(n.name for n in snap.borrowed if n.declared_dead),
            vm_missing_since=dict(self.vm_missing_since),
            peer_heard={p: self.peer_heard.get(p, self.started_at) for p in self.config.peers},
        )

    async def reconcile(self, starting: bool = True, snap: Snapshot | None = None) -> list[rec.Action]:
        """Compare contracts with what runs, and repair the difference (on start, and then
        every interval)."""
        observed = await self.observe(snap)
        # contracts are read after the observation: one that changed meanwhile is newer than
        # ``observed.at`` and the plan leaves it for the next interval
        actions = rec.plan(self.store.contracts(), observed, starting=starting, now=self.clock(),
                           limits=self.limits, busy=frozenset(self.busy))
        for action in actions:
            log.warning("reconcile: %s", action)
            self._note_repair(action)
            try:
                await self._repair(action, starting)
            except (SchedulerError, ProbeError, IllegalTransition, StaleContract) as exc:
                log.error("reconcile: %s failed: %s", action, exc)
        return actions

    async def _repair(self, a: rec.Action, starting: bool) -> None:
        c = self.store.get(a.contract_id) if a.contract_id else None
        if a.contract_id and (c is None or c.state.final or c.id in self.busy):
            return  # moved on since the plan was made
        if a.kind == "remove_node":
            await asyncio.to_thread(self.scheduler.remove, a.target, "viocluster-orphan")
        elif a.kind == "unlend":
            await asyncio.to_thread(self.scheduler.unlend, a.target)
        elif a.kind == "relend" and c is not None:
            await asyncio.to_thread(self.scheduler.lend, a.target, c.id)
        elif a.kind == "kill_vm" and self.vm_probe is not None:
            await asyncio.to_thread(self.vm_probe.remove, a.target)
        elif a.kind == "remove_peer" and self.switch_probe is not None:
            await asyncio.to_thread(self.switch_probe.remove, a.target)
        elif a.kind == "expire" and c is not None and c.state is S.PROPOSED:
            self._drop_proposal(c, a.why)
            if starting:
                await self._send(c.peer, self._msg(Decline, c.peer, contract_id=c.id, reason=a.why))
        elif a.kind == "rollback" and c is not None:
            await self._release_borrowed(c)  # nodes out of the scheduler before the API opens
            self.busy.add(c.id)
            self._spawn(self._rollback(c))
        elif a.kind == "provision" and c is not None:
            self.busy.add(c.id)
            self._spawn(self.provision(c))
        elif a.kind == "finish_reclaim" and c is not None:
            self.busy.add(c.id)
            self._spawn(self._finish_reclaim(c))
        elif a.kind in ("vanished", "node_down") and c is not None and c.state is S.ACTIVE:
            # our side first (down: jobs requeued; deleted), then the lender is told
            self.busy.add(c.id)
            self._spawn(self.give_back(c, a.why))
        elif a.kind in ("vm_gone", "peer_lost") and c is not None:
            # the borrower is told (if it answers), the VMs stopped, our hosts resumed
            self.busy.add(c.id)
            self._spawn(self.reclaim(c, a.why))

    async def _rollback(self, c: Contract) -> None:
        """A borrow cut off by a restart: undo it with the reclaim playbook, mark it failed."""
        try:
            undo = await asyncio.to_thread(self.executor.reclaim,
                                           {**self._vars(c), "trade_rollback": True}, c.id)
            self._advance(c, S.FAILED, "broker restarted during provisioning; rolled back"
                          + ("" if undo.ok else " (rollback playbook FAILED)"))
            await self._send(c.lender, self._msg(Return, c.lender, contract_id=c.id,
                                                 reason="provisioning interrupted"))
        finally:
            self.busy.discard(c.id)

    # ================================================================== status

    def status(self) -> dict[str, Any]:
        snap = self.last_snapshot
        state = snap.domain_state() if snap else None
        contracts = self.store.contracts()
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
            "peers": {p: {"last_seen": self.peer_seen.get(p)} for p in self.config.peers},
            "contracts": [
                {"id": c.id, "role": c.role.value, "peer": c.peer, "state": c.state.value,
                 "nodes": list(c.node_names), "addresses": [a for _n, a in c.addresses],
                 "updated_at": c.updated_at, "reason": c.reason}
                for c in contracts
            ],
            "repairs": self.repairs[-20:],
            "refusals": [{"peer": r.peer, "role": r.role.value, "count": r.count,
                          "first_at": r.first_at, "last_at": r.last_at, "reason": r.last_reason}
                         for r in self.store.refusals()],
        }

    async def drain(self) -> None:
        """Wait for the steps in flight (tests and a clean stop use it)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
