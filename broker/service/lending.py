"""The lender's side of the broker: answer requests, advertise, agree, take machines back.

Every decision is the trade core's (:func:`~broker.negotiation.trade.answer`,
:func:`~broker.negotiation.trade.adverts`, :func:`~broker.negotiation.trade.acceptance`,
:func:`~broker.negotiation.trade.lendable`, and the interval's ``TakeBack`` and ``Drain``);
this module measures the hosts it offers, keeps the contracts, and carries the steps out: the
scheduler takes a lent host out of service and puts it back, the executor stops the VMs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from collections.abc import Collection
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
    Needs,
    Offer,
    Reclaim,
    Request,
    Return,
    Terms,
    new_id,
)
from broker.policy import HostProperties, Intent, Loan, Requirements
from broker.policy import Terms as PolicyTerms
from broker.scheduler import SchedulerError, Snapshot
from broker.service.context import Context, unknown
from broker.service.probes import ProbeError, free_disk_gb, measure_host
from broker.service.store import StaleContract

log = logging.getLogger("broker")
S = ContractState


def wire_terms(terms: PolicyTerms) -> Terms:
    return Terms(terms.mode.value, float(terms.lease_s), terms.per_interval)


def loan_id(contract_id: str, host: str) -> str:
    """The trade core's loan: one host of a lent contract (``<contract>/<host>``)."""
    return f"{contract_id}/{host}"


def loan_of(loan: object) -> tuple[str, str]:
    """(contract id, host) of a :func:`loan_id` (neither holds a ``/``)."""
    contract, _slash, host = str(loan).partition("/")
    return contract, host


class Lending:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # The loans (one host of a contract each, :func:`loan_id`) the core said to drain
        # (-> why) and since when; and since when the borrower has reported a job on each
        # loan (from its heartbeat answers).
        # The drains are kept in the store too: a restart keeps them and their deadlines.
        kept = ctx.store.drains()
        self.draining: dict[str, str] = {loan: why for loan, (why, _since) in kept.items()}
        self.draining_since: dict[str, float] = {loan: since for loan, (_why, since) in kept.items()}
        self.loan_busy_since: dict[str, float] = {}

    # ------------------------------------------------------------------ offering

    def _open_loans(self) -> list[Contract]:
        return [c for c in self.ctx.store.contracts(open_only=True) if c.role is Role.LENDER]

    def _offerable(self, snap: Snapshot) -> tuple[list[Any], int]:
        """The lending hosts that may be offered now, and how many open proposals offer."""
        free, pending = trade.lendable(self._open_loans(),
                                       [h.node for h in self.ctx.config.lending_hosts],
                                       {n.name for n in snap.idle_physical})
        return [h for h in self.ctx.config.lending_hosts if h.node in free], pending

    async def _measure(self, snap: Snapshot, hosts: list[Any], peer: str) -> list[HostOffer]:
        """Each host as offered to ``peer``: its CPUs and free memory (by the scheduler), its
        free disk and RTT (measured now)."""
        idle = {n.name: n for n in snap.idle_physical}
        measured = []
        for h in hosts:
            node = idle[h.node]
            memory = node.memory_mb
            if node.free_memory_mb is not None:
                memory = min(memory, node.free_memory_mb) if memory else node.free_memory_mb
            measured.append(asyncio.to_thread(measure_host, h, node.cpus, memory,
                                              self.ctx.config.site, peer))
        return list(await asyncio.gather(*measured))

    async def on_request(self, m: Request) -> tuple[int, dict[str, Any]]:
        ctx = self.ctx
        existing = ctx.store.get(m.contract_id)
        if existing is not None:
            if existing.role is not Role.LENDER or existing.borrower != m.sender:
                return 409, {"error": f"contract id {m.contract_id} is taken", "code": "id_taken"}
            if existing.state is S.PROPOSED:
                return 200, {"reply": ctx.msg(Offer, m.sender, contract_id=existing.id,
                                              hosts=existing.offered, terms=existing.terms).to_dict()}
            return 409, {"error": f"contract {existing.id} is {existing.state.value}",
                         "code": "not_proposed"}
        decline = ctx.msg(Decline, m.sender, contract_id=m.contract_id, reason="")
        refused = trade.refusal(ctx.policy, m.sender)
        if refused:
            return 200, {"reply": replace(decline, reason=refused).to_dict()}
        now = ctx.clock()
        snap = await ctx.snapshot()
        hosts, pending = self._offerable(snap)
        answer = trade.answer(ctx.policy, snap.domain_state(), m.sender, m.nodes, now,
                              available=len(hosts), pending=pending)
        if not answer.ok:
            return 200, {"reply": replace(decline, reason=answer.reason).to_dict()}
        # every idle host measured now; those that meet the request's needs are offered
        measured = await self._measure(snap, hosts, m.sender)
        fit, unfit = trade.suited(Requirements(m.needs.cpus, m.needs.memory_mb, m.needs.disk_gb),
                                  [HostProperties(o.cpus, o.memory_mb, o.disk_gb) for o in measured])
        answer = trade.answer(ctx.policy, snap.domain_state(), m.sender, m.nodes, now,
                              available=len(fit), pending=pending, unfit=unfit)
        if not answer.ok:
            return 200, {"reply": replace(decline, reason=answer.reason).to_dict()}
        offers = [measured[i] for i in fit[:answer.count]]
        terms = wire_terms(ctx.policy.reclamation.terms)
        c, t = Contract.propose(m.contract_id, Role.LENDER, m.sender, ctx.config.domain,
                                m.nodes, m.needs, terms, now)
        c = replace(c, offered=tuple(offers))
        ctx.create(c, t)
        log.info("offered %s to %s (contract %s)", ", ".join(o.name for o in offers), m.sender, c.id)
        return 200, {"reply": ctx.msg(Offer, m.sender, contract_id=c.id, hosts=c.offered,
                                      terms=terms).to_dict()}

    async def advertise(self, snap: Snapshot, intent: Intent, now: float) -> None:
        """Offer idle hosts unasked to a trusted peer (:func:`trade.adverts`): the proposal is
        kept as a lender contract, as an answered request's, until it is accepted, refused or
        expires."""
        ctx = self.ctx
        proposing = {c.borrower for c in self._open_loans() if c.state is S.PROPOSED}
        peers = [p for p in sorted(ctx.config.peers)
                 if p not in proposing and now >= ctx.quiet_until.get(f"advert:{p}", 0.0)]
        if not peers:
            return
        hosts, pending = self._offerable(snap)
        for ad in trade.adverts(ctx.policy, intent, peers, now, available=len(hosts),
                                pending=pending):
            offered = tuple(await self._measure(snap, hosts[:ad.count], ad.peer))
            terms = wire_terms(ctx.policy.reclamation.terms)
            c, t = Contract.propose(new_id(ctx.config.domain), Role.LENDER, ad.peer,
                                    ctx.config.domain, len(offered), Needs(), terms, now)
            c = replace(c, offered=offered)
            ctx.create(c, t)
            log.info("advertising %s to %s (contract %s)", ", ".join(o.name for o in offered),
                     ad.peer, c.id)
            reply = await ctx.send(ad.peer, ctx.msg(Offer, ad.peer, contract_id=c.id,
                                                    hosts=offered, terms=terms))
            if reply.ok and reply.body.get("state") in ("agreed", "provisioning", "active"):
                continue  # its accept has come (or comes) to on_accept
            why = reply.body.get("reason") if reply.ok else reply.error
            why = why if isinstance(why, str) else "no answer"
            ctx.quiet_until[f"advert:{ad.peer}"] = now + trade.rest_after_decline(
                ctx.config.interval_s)
            current = ctx.store.get(c.id)
            if current is not None and current.state is S.PROPOSED:
                ctx.drop_proposal(current, f"{ad.peer} did not take the advert: {why[:200]}")

    async def on_accept(self, m: Accept) -> tuple[int, dict[str, Any]]:
        ctx = self.ctx
        c = ctx.store.get(m.contract_id)
        if c is None or c.role is not Role.LENDER or c.peer != m.sender:
            return unknown(m.contract_id)
        verdict = trade.acceptance(c, m.hosts, ctx.clock(), ctx.config.offer_ttl_s)
        if verdict.expired:
            ctx.drop_proposal(c, "offer expired before it was accepted")
        if not (verdict.ok or verdict.again):
            return (400 if verdict.code == "not_offered" else 409), {"error": verdict.error,
                                                                     "code": verdict.code}
        if verdict.ok:
            nodes = tuple((h, vm_node_name(c.borrower, c.id, i)) for i, h in enumerate(m.hosts))
            c = ctx.advance(c, S.AGREED, f"borrower accepted {', '.join(m.hosts)}", nodes=nodes)
            for host in c.host_names:
                await asyncio.to_thread(ctx.scheduler.lend, host, c.id)
        return 200, {"state": c.state.value, "nodes": [list(n) for n in c.nodes]}

    # ------------------------------------------------------------------ loans

    def word(self, c: Contract) -> str:
        """Our state of ``c`` as a heartbeat says it (a contract we drain a host of is
        ``draining``: the borrower keeps new jobs off its nodes)."""
        return trade.word(c.state, c.role is Role.LENDER and c.id in self.draining_contracts())

    def draining_contracts(self) -> dict[str, str]:
        """The contracts a host of which drains (-> why)."""
        return {loan_of(loan)[0]: why for loan, why in self.draining.items()}

    def note_busy(self, peer: str, busy: Any, busy_hosts: Any, now: float) -> None:
        """The borrower's word on which of our loans to it run a job: the lent hosts
        (``busy_hosts``, ``<contract>/<host>``) or, from a borrower that does not list them,
        the contracts (every host of a busy contract counts busy); anything else, or a peer
        that says neither, counts as no job."""
        def strings(value: Any) -> set[str] | None:
            return {b for b in value if isinstance(b, str)} if isinstance(value, list) else None

        hosts, contracts = strings(busy_hosts), strings(busy) or set()
        for c in self.ctx.store.contracts(open_only=True, peer=peer):
            if c.role is not Role.LENDER:
                continue
            for h in c.host_names:
                loan = loan_id(c.id, h)
                if (loan in hosts) if hosts is not None else (c.id in contracts):
                    self.loan_busy_since.setdefault(loan, now)
                else:
                    self.loan_busy_since.pop(loan, None)

    async def loans(self, lent: dict[str, Contract], known: set[str]) -> list[Loan]:
        """The active loans as the trade core sees them, one per lent host (when lent,
        whether a job of the borrower's runs on the host and since when, since when
        drained, the host's free disk); the drain books forget hosts no longer lent."""
        now_lent = {loan_id(c.id, h) for c in lent.values() for h in c.host_names}
        gone = [k for k in self.draining if k not in now_lent]
        if gone:
            self.ctx.store.drop_drains(gone)
        self.draining = {k: why for k, why in self.draining.items() if k in now_lent}
        self.draining_since = {k: v for k, v in self.draining_since.items() if k in self.draining}
        self.loan_busy_since = {k: v for k, v in self.loan_busy_since.items()
                                if loan_of(k)[0] in known}
        disk = await self._free_disk(list(lent.values()))
        return [Loan(loan_id(c.id, h), c.borrower, c.updated_at,
                     self.loan_busy_since.get(loan_id(c.id, h)),
                     self.draining_since.get(loan_id(c.id, h)), disk.get(h))
                for c in lent.values() for h in c.host_names]

    def drain(self, loan: str, reason: str, now: float) -> None:
        log.info("contract %s: draining (%s): it comes back when its job ends", loan, reason)
        self.ctx.store.set_drain(loan, reason, now)
        self.draining[loan] = reason
        self.draining_since[loan] = now

    async def _free_disk(self, loans: list[Contract]) -> dict[str, float]:
        """The free disk of each lent host (where the COWs go), when the lending policy
        watches it; a host that cannot be measured tells nothing."""
        if self.ctx.policy.lending.min_free_disk_gb is None or not loans:
            return {}
        hosts = {h.node: h for h in self.ctx.config.lending_hosts}
        names = sorted({n for c in loans for n in c.host_names if n in hosts})
        found = await asyncio.gather(*(asyncio.to_thread(free_disk_gb, hosts[n]) for n in names))
        return {n: float(gb) for n, gb in zip(names, found) if gb is not None}

    # ------------------------------------------------------------------ taking back

    async def on_return(self, m: Return) -> tuple[int, dict[str, Any]]:
        """The borrower gives machines back: stop its VMs on our hosts, put them in service."""
        ctx = self.ctx
        c = ctx.store.get(m.contract_id)
        if c is None or c.role is not Role.LENDER or c.peer != m.sender:
            return unknown(m.contract_id)
        if c.state.final:
            return 200, {"state": c.state.value}
        if c.state is S.PROPOSED:
            ctx.drop_proposal(c, f"borrower withdrew: {m.reason}")
            return 200, {"state": S.CLOSED.value}
        if c.state is not S.RECLAIMING:
            c = ctx.advance(c, S.RECLAIMING, f"returned by {m.sender}: {m.reason}")
        if c.id not in ctx.busy:
            ctx.busy.add(c.id)
            ctx.spawn(self.finish_release(c))
        return 200, {"state": c.state.value}

    def _undrain(self, c: Contract, hosts: Collection[str]) -> None:
        loans = [loan_id(c.id, h) for h in hosts]
        if any(loan in self.draining for loan in loans):
            self.ctx.store.drop_drains(loans)
        for loan in loans:
            self.draining.pop(loan, None)
            self.draining_since.pop(loan, None)

    async def take_back(self, c: Contract, hosts: Collection[str], reason: str) -> Contract:
        """Take back some hosts of an active loan (a gradual reclaim): the borrower requeues
        the jobs on their nodes and drops them, the VMs are stopped, the hosts resumed; the
        contract stays active with the others. Every host taken back is :meth:`reclaim`."""
        ctx = self.ctx
        gone = [h for h in c.host_names if h in set(hosts)]
        if set(gone) >= set(c.host_names):
            return await self.reclaim(c, reason)
        self._undrain(c, gone)
        ctx.busy.add(c.id)
        start = time.monotonic()
        try:
            reply = await ctx.send(c.borrower, ctx.msg(Reclaim, c.borrower, contract_id=c.id,
                                                       reason=reason, hosts=tuple(gone)))
            if not reply.ok:
                log.warning("contract %s: borrower did not confirm taking back %s (%s); "
                            "stopping the VMs anyway", c.id, ", ".join(gone), reply.error)
            part = replace(c, nodes=tuple(n for n in c.nodes if n[0] in gone))
            if not (await self._stop(part, start)).ok:
                log.error("contract %s: the reclaim playbook failed for %s; they stay in the "
                          "contract and are taken back again", c.id, ", ".join(gone))
                return c
            new, t = c.without(gone, ctx.clock(), f"took back {', '.join(gone)}: {reason}")
            ctx.store.save(new, t)
            log.info("contract %s (lender, peer %s): took back %s, %s still lent: %s", c.id,
                     c.borrower, ", ".join(gone), ", ".join(new.host_names), reason)
            return new
        finally:
            ctx.busy.discard(c.id)

    async def reclaim(self, c: Contract, reason: str) -> Contract:
        """Take lent machines back: the borrower requeues first, then the VMs are killed."""
        ctx = self.ctx
        self._undrain(c, c.host_names)
        ctx.busy.add(c.id)
        start = time.monotonic()
        if c.state is not S.RECLAIMING:
            try:
                c = ctx.advance(c, S.RECLAIMING, reason)
            except (IllegalTransition, StaleContract):
                ctx.busy.discard(c.id)
                raise
        reply = await ctx.send(c.borrower, ctx.msg(Reclaim, c.borrower, contract_id=c.id,
                                                   reason=reason))
        if not reply.ok:
            log.warning("contract %s: borrower did not confirm the reclaim (%s); stopping the "
                        "VMs anyway", c.id, reply.error)
        return await self.finish_release(c, started=start)

    async def finish_release(self, c: Contract, started: float | None = None) -> Contract:
        """Stop the contract's VMs and put our hosts back in service.

        With a VM probe configured, its ``remove`` command kills each VM at once (the fast
        path: a reclaim must not wait for a playbook to start); ``reclaim.yml`` then runs in
        any case and cleans up what is left (COW, config directory, runtime switch peers).
        """
        ctx = self.ctx
        ctx.busy.add(c.id)
        try:
            result = await self._stop(c, started)
            if not result.ok:
                return ctx.advance(c, S.FAILED, f"reclaim playbook: {result.summary()}")
            return ctx.advance(c, S.CLOSED, "VMs stopped, hosts back in service")
        finally:
            ctx.busy.discard(c.id)

    async def _stop(self, c: Contract, started: float | None) -> Any:
        """Stop the VMs of ``c``'s nodes and put its hosts back in service; the reclaim
        playbook's result."""
        ctx = self.ctx
        probe = ctx.vm_probe
        fast = probe is not None and probe.enabled
        if fast:
            for node in c.node_names:
                try:
                    await asyncio.to_thread(probe.remove, node)
                except ProbeError as exc:
                    log.warning("contract %s: fast VM stop failed (%s); the playbook will", c.id, exc)
            if started is not None:
                ctx.metrics.reclaim_seconds.observe(time.monotonic() - started)
                log.info("contract %s: VMs stopped %.2f s after the reclaim began", c.id,
                         time.monotonic() - started)
        result = await asyncio.to_thread(ctx.executor.reclaim, ctx.playbook_vars(c), c.id)
        if started is not None and not fast:
            ctx.metrics.reclaim_seconds.observe(time.monotonic() - started)
        ctx.metrics.playbooks.labels(playbook="reclaim", result="ok" if result.ok else "failed").inc()
        for host in c.host_names:
            try:
                await asyncio.to_thread(ctx.scheduler.unlend, host)
            except SchedulerError as exc:  # a dead host: reconciliation resumes it later
                log.warning("contract %s: cannot put %s back in service yet: %s", c.id, host, exc)
        return result
