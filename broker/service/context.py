"""What the broker's parts share: its connections, its books, and the steps every part takes.

:class:`Context` holds the domain's config, the contract store, the scheduler adapter, the
executor, the peer client, the probes and the metrics, and the in-memory state the parts
read and write together (contracts with a step in flight, peers asked to wait, when each peer
was last heard). Its methods are the interpreter's primitives: advance a contract (persisted
before anything acts on it), drop a proposal, send a message, start a background step, take a
scheduler snapshot. The lender's side (:mod:`~broker.service.lending`), the borrower's
(:mod:`~broker.service.borrowing`), the repairs (:mod:`~broker.service.repairs`) and the
interval (:mod:`~broker.service.broker`) are built over one context.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from broker.negotiation.contracts import Contract, ContractState
from broker.negotiation.messages import Message, new_id
from broker.provisioning import Executor
from broker.scheduler import SchedulerAdapter, Snapshot
from broker.service.client import PeerClient, Reply
from broker.service.config import BrokerConfig
from broker.service.metrics import Metrics
from broker.service.probes import CommandProbe

log = logging.getLogger("broker")


class Context:
    def __init__(
        self,
        config: BrokerConfig,
        store: Any,
        scheduler: SchedulerAdapter,
        executor: Executor,
        client: PeerClient,
        vm_probe: CommandProbe | None,
        switch_probe: CommandProbe | None,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.executor = executor
        self.client = client
        self.vm_probe = vm_probe
        self.switch_probe = switch_probe
        self.metrics = metrics
        self.clock = clock
        self.policy = config.policy
        self.busy: set[str] = set()  # contracts with an operation in flight
        # A peer that just turned us down is not asked again before this time (no request storm
        # while its own policy says no); ``advert:<peer>`` keys the same for our adverts.
        self.quiet_until: dict[str, float] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.last_snapshot: Snapshot | None = None
        self.peer_seen: dict[str, float] = {}  # last message from each peer (status shows it)
        # last time each peer was heard from: a message from it, or any answer to ours
        self.peer_heard: dict[str, float] = {}
        self.started_at = clock()

    # ------------------------------------------------------------------ contracts

    def advance(self, c: Contract, to: ContractState, reason: str, **changes: Any) -> Contract:
        """Move ``c`` to ``to``; the step is stored before the caller acts on it."""
        new, t = c.advance(to, self.clock(), reason, **changes)
        self.store.save(new, t)
        log.info("contract %s (%s, peer %s): %s -> %s: %s", c.id, c.role.value, c.peer,
                 c.state.value, to.value, reason)
        self.count_contracts()
        return new

    def create(self, c: Contract, t: Any) -> None:
        self.store.create(c, t)
        self.count_contracts()

    def drop_proposal(self, c: Contract, reason: str) -> None:
        """A proposal ended without an agreement: not kept as a contract, counted per peer."""
        self.store.drop_refused(c, self.clock(), reason)
        log.info("contract %s (%s, peer %s): proposal dropped: %s", c.id, c.role.value, c.peer,
                 reason)
        self.count_contracts()

    def count_contracts(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for c in self.store.contracts():
            key = (c.state.value, c.role.value)
            counts[key] = counts.get(key, 0) + 1
        self.metrics.set_contracts(counts)

    def playbook_vars(self, c: Contract) -> dict[str, Any]:
        """The variables borrow.yml and reclaim.yml take for contract ``c``."""
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

    # ------------------------------------------------------------------ peers

    def msg(self, cls: type[Message], peer: str, **fields: Any) -> Any:
        return cls(id=new_id("m"), sender=self.config.domain, recipient=peer,
                   sent_at=self.clock(), **fields)

    async def send(self, peer_name: str, message: Message) -> Reply:
        peer = self.config.peers.get(peer_name)
        if peer is None:
            return Reply(0, {"error": f"{peer_name} is not a configured peer"})
        reply = await self.client.send(peer, message)
        if reply.status != 0:
            self.peer_heard[peer_name] = self.clock()
        return reply

    # ------------------------------------------------------------------ steps and observations

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background (a playbook, a release); its failure is logged."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background step failed: %s", task.exception(), exc_info=task.exception())

    async def snapshot(self) -> Snapshot:
        """The scheduler's view now (kept as ``last_snapshot``), with the gauges it sets."""
        snap = await asyncio.to_thread(self.scheduler.snapshot)
        self.last_snapshot = snap
        state = snap.domain_state()
        self.metrics.demand.set(state.demand)
        self.metrics.need.set(state.need)
        for kind, value in (("physical", state.physical), ("lent", state.lent),
                            ("borrowed", state.borrowed)):
            self.metrics.nodes.labels(kind=kind).set(value)
        return snap


def unknown(contract_id: str) -> tuple[int, dict[str, Any]]:
    """The answer to a message about a contract we do not hold with its sender."""
    return 404, {"error": f"unknown contract {contract_id}", "code": "unknown_contract"}
