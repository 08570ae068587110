"""The borrower's side of the broker: ask, take offers and adverts, provision, give back.

Every decision is the trade core's (:func:`~broker.negotiation.trade.screen`,
:func:`~broker.negotiation.trade.choose`, :func:`~broker.negotiation.trade.take_advert`, and
the interval's ``Ask`` and ``GiveBack``); this module asks the peers, allocates the VMs'
addresses, runs the borrow playbook, admits the VMs to the scheduler and takes them out again
(their jobs requeued).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
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
from broker.policy import HostProperties
from broker.policy import Terms as PolicyTerms
from broker.policy.reclamation import Mode
from broker.scheduler import SchedulerError
from broker.service.client import Reply
from broker.service.context import Context, unknown
from broker.service.probes import ProbeError, ping_ms
from broker.service.store import StaleContract

log = logging.getLogger("broker")
S = ContractState


def candidates(cid: str, lender: str, offer: Offer) -> list[trade.Candidate]:
    """The hosts of an offer as the trade core sees them (a host whose RTT its lender could
    not measure fails a maximum-RTT rule, and ranks last)."""
    terms = PolicyTerms(Mode(offer.terms.mode), offer.terms.lease_s, offer.terms.per_interval)
    return [trade.Candidate(cid, HostProperties(
                                h.cpus, h.memory_mb, h.disk_gb,
                                h.rtt_ms if h.rtt_ms is not None else math.inf, h.site),
                            terms,
                            (h.rtt_ms if h.rtt_ms is not None else 1e9, -h.cpus, -h.memory_mb),
                            ref=h, peer=lender)
            for h in offer.hosts]


def reply_message(reply: Reply) -> Message | None:
    """The message a peer's answer carries, if it is a valid one."""
    if not reply.ok or not isinstance(reply.body.get("reply"), dict):
        return None
    try:
        return from_dict(reply.body["reply"])
    except MessageError as exc:
        log.warning("peer's reply is not a valid message: %s", exc.reason)
        return None


class Borrowing:
    def __init__(self, ctx: Context, tell: Callable[[str], Awaitable[None]]) -> None:
        """``tell(lender)``: send the lender our contracts' states now (a heartbeat), so it
        follows a borrow's progress without waiting for the next interval."""
        self.ctx = ctx
        self.tell = tell

    # ------------------------------------------------------------------ asking

    def _free_addresses(self, wanted: int, what: str) -> int:
        """How many of ``wanted`` VMs the address pool has room for (all without a pool)."""
        pool = self.ctx.config.vm_pool
        if pool is None:
            return wanted
        free = max(pool.free(self.ctx.store.addresses_in_use()), 0)
        if free == 0:
            log.warning("%s, but the VM address pool %s has no free address (all held by open "
                        "contracts); not borrowing", what, pool)
        elif free < wanted:
            log.warning("%s, but the VM address pool %s has %d free address(es); taking %d",
                        what, pool, free, free)
        return min(free, wanted)

    async def borrow(self, wanted: int, borrowed: int) -> list[Contract]:
        """Ask every peer for ``wanted`` nodes, take the offers that fit best, agree, provision."""
        ctx = self.ctx
        if wanted <= 0 or not ctx.config.peers:
            return []
        wanted = self._free_addresses(wanted, f"need {wanted} node(s)")
        if wanted <= 0:
            return []
        now = ctx.clock()
        needs = Needs(**ctx.config.needs)
        asks: list[tuple[str, Contract, Request]] = []
        for name in sorted(ctx.config.peers):
            if now < ctx.quiet_until.get(name, 0.0):
                continue
            c, t = Contract.propose(new_id(ctx.config.domain), Role.BORROWER, ctx.config.domain,
                                    name, wanted, needs, Terms(), now)
            ctx.store.create(c, t)
            asks.append((name, c, ctx.msg(Request, name, contract_id=c.id, nodes=wanted,
                                          needs=needs, terms=Terms())))
        if not asks:
            return []
        ctx.count_contracts()
        log.info("need %d node(s): asking %s", wanted, ", ".join(a[0] for a in asks))
        replies = await asyncio.gather(*(ctx.send(name, req) for name, _c, req in asks))
        found: list[trade.Candidate] = []
        offers: dict[str, Offer] = {}
        for (name, c, _req), reply in zip(asks, replies):
            offer = reply_message(reply)
            if not isinstance(offer, Offer) or offer.contract_id != c.id:
                why = offer.reason if isinstance(offer, Decline) else (reply.error or "no offer")
                ctx.drop_proposal(c, f"{name} did not offer: {why}")
                ctx.quiet_until[name] = now + trade.rest_after_decline(ctx.config.interval_s)
                continue
            offers[c.id] = offer
            found.extend(candidates(c.id, name, offer))
        fitting, turned = trade.screen(ctx.policy, found, borrowed, now)
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
                              co_located=ctx.policy.borrowing.location.co_located)
        agreed = []
        for name, c, _req in asks:
            if c.id not in offers:
                continue
            hosts: list[HostOffer] = [cand.ref for cand in choice.taken.get(c.id, ())]
            if not hosts:
                await self._decline(name, c, choice.refused[c.id])
                continue
            taken = await self.take(name, c, offers[c.id], hosts)
            if taken is not None:
                agreed.append(taken)
        return agreed

    async def _decline(self, lender: str, c: Contract, why: str) -> None:
        self.ctx.drop_proposal(c, why)
        await self.ctx.send(lender, self.ctx.msg(Decline, lender, contract_id=c.id, reason=why))

    async def on_advert(self, m: Offer) -> tuple[int, dict[str, Any]]:
        """Hosts a lender offers unasked (an advert): taken without asking when our own
        interval would ask for nodes now (:func:`trade.take_advert`), else refused; either
        way the answer says which."""
        ctx = self.ctx
        if ctx.store.get(m.contract_id) is not None:
            return 409, {"error": f"contract id {m.contract_id} is taken; advertise under a new "
                         "one", "code": "id_taken"}
        now = ctx.clock()
        snap = await ctx.snapshot()
        asking = any(c.role is Role.BORROWER and c.state in (S.PROPOSED, S.AGREED, S.PROVISIONING)
                     for c in ctx.store.contracts(open_only=True))
        choice = trade.take_advert(ctx.policy, snap.domain_state(),
                                   candidates(m.contract_id, m.sender, m), now, asking=asking)
        hosts: list[HostOffer] = [cand.ref for cand in choice.taken.get(m.contract_id, ())]
        if not hosts:
            why = choice.refused.get(m.contract_id, "nothing taken")
            log.info("advert %s of %s not taken: %s", m.contract_id, m.sender, why)
            return 200, {"state": "declined", "reason": why}
        c, t = Contract.propose(m.contract_id, Role.BORROWER, ctx.config.domain, m.sender,
                                len(hosts), Needs(**ctx.config.needs), m.terms, now)
        ctx.create(c, t)
        log.info("taking %s advertised by %s (contract %s)", ", ".join(h.name for h in hosts),
                 m.sender, c.id)
        taken = await self.take(m.sender, c, m, hosts)
        if taken is None:
            got = ctx.store.get(c.id)
            return 200, {"state": "declined",
                         "reason": got.reason if got is not None else "not taken"}
        return 200, {"state": taken.state.value, "hosts": [h for h, _n in taken.nodes]}

    async def take(self, name: str, c: Contract, offer: Offer,
                   hosts: list[HostOffer]) -> Contract | None:
        """Agree on ``hosts`` of ``offer`` (with a VM address each, from the pool), tell the
        lender (``accept``) and provision; None when it came to nothing."""
        ctx = self.ctx
        pool = ctx.config.vm_pool
        hosts = hosts[:self._free_addresses(len(hosts), f"contract {c.id} takes {len(hosts)} host(s)")]
        if not hosts:
            await self._decline(name, c, f"no free address in the VM address pool {pool}")
            return None
        nodes = tuple((h.name, vm_node_name(ctx.config.domain, c.id, i)) for i, h in enumerate(hosts))
        with ctx.store.transaction():  # the VMs' addresses are taken with the agreement
            addresses: tuple[tuple[str, str], ...] = ()
            if pool is not None:
                ips = pool.allocate(len(nodes), ctx.store.addresses_in_use())
                addresses = tuple(zip((n for _h, n in nodes), ips))
            c = ctx.advance(c, S.AGREED, f"accepting {', '.join(h.name for h in hosts)} from {name}",
                            offered=offer.hosts, terms=offer.terms, nodes=nodes,
                            addresses=addresses)
        if addresses:
            log.info("contract %s: VM addresses %s", c.id,
                     ", ".join(f"{n} {a}" for n, a in addresses))
        reply = await ctx.send(name, ctx.msg(Accept, name, contract_id=c.id,
                                             hosts=tuple(h.name for h in hosts)))
        if not reply.ok:
            ctx.advance(c, S.CLOSED, f"{name} refused the acceptance: {reply.error}")
            return None
        ctx.busy.add(c.id)
        ctx.spawn(self.provision(c))
        return c

    # ------------------------------------------------------------------ provisioning

    async def provision(self, c: Contract) -> Contract:
        """borrow.yml, then admit each VM to our scheduler; on failure roll back, mark failed."""
        ctx = self.ctx
        ctx.busy.add(c.id)
        try:
            agreed_at = c.updated_at
            c = ctx.advance(c, S.PROVISIONING, "running the borrow playbook")
            await self.tell(c.lender)
            variables = ctx.playbook_vars(c)
            result = await asyncio.to_thread(ctx.executor.provision, variables, c.id)
            ctx.metrics.playbooks.labels(playbook="borrow", result="ok" if result.ok else "failed").inc()
            if not result.ok:
                # a VM that booted before the failure may have joined the scheduler: take it out
                await self.release(c)
                return await self._failed(c, f"borrow playbook: {result.summary()}",
                                          "provisioning failed")
            try:
                for node in c.node_names:
                    await asyncio.to_thread(ctx.scheduler.admit, node,
                                            ctx.config.executor.admit_timeout_s)
            except SchedulerError as exc:
                await self.release(c)
                undo = await asyncio.to_thread(ctx.executor.reclaim,
                                               {**variables, "trade_rollback": True}, c.id)
                return await self._failed(c, f"admission failed: {exc}; rollback "
                                          f"{'done' if undo.ok else 'FAILED'}", "admission failed")
            c = ctx.advance(c, S.ACTIVE, f"{', '.join(c.node_names)} joined the scheduler")
            ctx.metrics.trade_seconds.observe(ctx.clock() - agreed_at)
            await self.tell(c.lender)
            return c
        finally:
            ctx.busy.discard(c.id)

    async def _failed(self, c: Contract, why: str, told: str) -> Contract:
        """Mark a borrow failed and give the lender its hosts back."""
        c = self.ctx.advance(c, S.FAILED, why)
        await self.ctx.send(c.lender, self.ctx.msg(Return, c.lender, contract_id=c.id, reason=told))
        return c

    async def rollback(self, c: Contract) -> None:
        """A borrow cut off by a restart: undo it with the reclaim playbook, mark it failed."""
        ctx = self.ctx
        try:
            undo = await asyncio.to_thread(ctx.executor.reclaim,
                                           {**ctx.playbook_vars(c), "trade_rollback": True}, c.id)
            await self._failed(c, "broker restarted during provisioning; rolled back"
                               + ("" if undo.ok else " (rollback playbook FAILED)"),
                               "provisioning interrupted")
        finally:
            ctx.busy.discard(c.id)

    # ------------------------------------------------------------------ ending

    async def release(self, c: Contract, hosts: Collection[str] | None = None) -> list[str]:
        """Our side of ending a loan (or, ``hosts``, of giving back those of its hosts): each
        node down (jobs requeued), then deleted; switch peers no other loan needs are
        removed."""
        ctx = self.ctx
        gone = set(c.host_names if hosts is None else hosts)
        requeued: list[str] = []
        for host, node in c.nodes:
            if host in gone:
                result = await asyncio.to_thread(ctx.scheduler.remove, node,
                                                 f"viocluster-reclaim:{c.id}")
                requeued.extend(result.requeued)
        probe = ctx.switch_probe
        if probe is not None and probe.enabled:
            keep = {h for o in ctx.store.contracts(open_only=True)
                    if o.id != c.id and o.role is Role.BORROWER for h in o.host_names}
            keep |= set(c.host_names) - gone
            for host in sorted(set(c.host_names) - keep):
                try:
                    await asyncio.to_thread(probe.remove, host)
                except ProbeError as exc:
                    log.warning("%s", exc)
        return requeued

    async def on_reclaim(self, m: Reclaim) -> tuple[int, dict[str, Any]]:
        """The lender takes its machines back: our nodes go down first (jobs requeued)."""
        ctx = self.ctx
        c = ctx.store.get(m.contract_id)
        if c is None or c.role is not Role.BORROWER or c.peer != m.sender:
            return unknown(m.contract_id)
        if c.state.final:
            return 200, {"state": c.state.value, "requeued": []}
        if c.state is S.PROVISIONING or c.id in ctx.busy:
            return 409, {"error": f"contract {c.id} is being provisioned; retry shortly",
                         "code": "busy"}
        partial = [h for h in c.host_names if h in set(m.hosts)]
        if m.hosts and c.state is S.ACTIVE and set(c.host_names) - set(m.hosts):
            # some hosts taken back (gradual): their nodes go, the contract stays active; a
            # host no longer in it was taken back already (the lender's retry)
            ctx.busy.add(c.id)
            try:
                requeued = await self.release(c, partial)
                if partial:
                    new, t = c.without(partial, ctx.clock(),
                                       f"lender took back {', '.join(partial)}: {m.reason}")
                    ctx.store.save(new, t)
                    log.info("contract %s (borrower, peer %s): %s taken back, %d job(s) "
                             "requeued; %s still borrowed", c.id, c.lender, ", ".join(partial),
                             len(requeued), ", ".join(new.host_names))
                return 200, {"state": c.state.value, "requeued": requeued}
            finally:
                ctx.busy.discard(c.id)
        ctx.busy.add(c.id)
        try:
            if c.state is S.PROPOSED:
                ctx.drop_proposal(c, f"lender withdrew: {m.reason}")
                return 200, {"state": S.CLOSED.value, "requeued": []}
            if c.state is not S.RECLAIMING:
                c = ctx.advance(c, S.RECLAIMING, f"lender reclaims: {m.reason}")
            requeued = await self.release(c)
            c = ctx.advance(c, S.CLOSED, f"reclaimed by {m.sender}; requeued {len(requeued)} job(s)")
            return 200, {"state": c.state.value, "requeued": requeued}
        finally:
            ctx.busy.discard(c.id)

    async def give_back(self, c: Contract, reason: str) -> Contract:
        """Return borrowed machines: nodes out of our scheduler, then tell the lender."""
        ctx = self.ctx
        ctx.busy.add(c.id)
        try:
            c = ctx.advance(c, S.RECLAIMING, f"returning: {reason}")
        except (IllegalTransition, StaleContract):
            ctx.busy.discard(c.id)
            raise
        return await self.finish_release(c, tell_lender=True)

    async def finish_release(self, c: Contract, tell_lender: bool) -> Contract:
        ctx = self.ctx
        ctx.busy.add(c.id)
        try:
            await self.release(c)
            if not tell_lender:
                return ctx.advance(c, S.CLOSED, "nodes out; the lender had ended its side")
            reply = await ctx.send(c.lender, ctx.msg(Return, c.lender, contract_id=c.id,
                                                     reason=c.reason or "returned"))
            if reply.ok:
                return ctx.advance(c, S.CLOSED, "returned to the lender")
            if reply.status == 404:
                return ctx.advance(c, S.CLOSED, "nodes out; the lender holds no such contract")
            # Our side is done (nodes down and deleted). The lender learns the contract is
            # closed from the answer to its next heartbeat, or takes its hosts back once it
            # has not heard from us for its peer_lost_timeout_s.
            log.warning("contract %s: the lender was not told (%s); it learns at the next "
                        "contact", c.id, reply.error)
            return ctx.advance(c, S.CLOSED, f"nodes out; lender not told yet ({reply.error[:120]})")
        finally:
            ctx.busy.discard(c.id)

    # ------------------------------------------------------------------ a lender's drain

    async def hold(self, c: Contract, hold: bool) -> None:
        """Keep new jobs off the nodes of a borrowed contract its lender drains (``hold``), or
        let them take jobs again; nodes already so (by the last snapshot) are left alone."""
        ctx = self.ctx
        snap = ctx.last_snapshot
        mark = ctx.scheduler.draining_reason
        for name in c.node_names:
            n = snap.node(name) if snap is not None else None
            if n is None or n.reason.startswith(mark) == hold:
                continue
            try:
                if hold:
                    await asyncio.to_thread(ctx.scheduler.hold, name, c.id)
                    log.info("contract %s: the lender drains it; %s takes no new job", c.id, name)
                else:
                    await asyncio.to_thread(ctx.scheduler.unhold, name)
                    log.info("contract %s: the lender no longer drains it; %s takes jobs again",
                             c.id, name)
            except SchedulerError as exc:
                log.warning("contract %s: %s", c.id, exc)

    def busy_with(self, lender: str) -> tuple[list[str], list[str]]:
        """Our contracts with ``lender`` whose nodes run a job now (by the last snapshot), and
        the lender's hosts under them (``<contract>/<host>``, the lender's loans): the lender
        drains these instead of preempting them, and takes the idle hosts of a contract back
        first. The contract list is what lenders that read no host list go by."""
        snap = self.ctx.last_snapshot
        if snap is None:
            return [], []
        contracts, hosts = [], []
        for c in self.ctx.store.contracts(open_only=True, peer=lender):
            if c.role is not Role.BORROWER:
                continue
            busy = [host for host, vm in c.nodes if (n := snap.node(vm)) is not None and n.busy]
            if busy:
                contracts.append(c.id)
                hosts.extend(f"{c.id}/{host}" for host in busy)
        return contracts, hosts
