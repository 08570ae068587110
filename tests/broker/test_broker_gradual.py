"""Gradual reclamation in the live broker: a contract shrinks one host an interval; and a
drain that takes a contract's idle host back at once while its busy one drains.

Scheduler, executor and peer are stand-ins: a borrowed VM's node daemon is a second slurmd
that can only listen on SlurmdPort, so this machine's test Slurm cannot run two of them for one
contract. The same path with real VMs, two hosts in one contract, runs in the lab test
(tests/lab/test_lab.py, ``gradual``); the decisions are the trade core's
(tests/policy/test_trade_core.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from broker.negotiation.contracts import Contract, ContractState, Role
from broker.negotiation.messages import Heartbeat, HostOffer, Needs, Reclaim, Terms
from broker.provisioning.executor import RunResult
from broker.scheduler.base import Job, Node, RemoveResult, Snapshot
from broker.service.broker import Broker
from broker.service.client import Reply
from broker.service.config import parse_config
from broker.service.store import Store

S = ContractState
FP = "sha256:" + "cd" * 32
CID = "a-c1"
NODES = (("n1", "a-vm-0"), ("n2", "a-vm-1"))


class Peer:
    """The other broker: records what it is sent; confirms reclaims; says which loans run a
    job (``busy``, its contracts, and ``busy_hosts``, the lent hosts; None: left out)."""

    def __init__(self, busy: list[str] | None = None, busy_hosts: list[str] | None = None) -> None:
        self.sent: list[Any] = []
        self.busy = busy or []
        self.busy_hosts = busy_hosts

    async def send(self, peer: Any, message: Any) -> Reply:
        self.sent.append(message)
        if isinstance(message, Heartbeat):
            body: dict[str, Any] = {"contracts": [[c, s] for c, s in message.contracts],
                                    "busy": self.busy}
            if self.busy_hosts is not None:
                body["busy_hosts"] = self.busy_hosts
            return Reply(200, body)
        return Reply(200, {"state": "active", "requeued": []})

    async def close(self) -> None:
        pass


class Executor:
    def __init__(self) -> None:
        self.reclaimed: list[list[str]] = []

    def reclaim(self, variables: dict[str, Any], ident: str) -> RunResult:
        self.reclaimed.append([vm["name"] for vm in variables["trade_vms"]])
        return RunResult("reclaim.yml", ident, True, "successful", 0, 0.0)


class LenderScheduler:
    """Domain b: n1 and n2 lent to a, n3 busy with b's own job, two more of b's jobs waiting:
    b needs both lent hosts back."""

    borrowed_feature = "borrowed"
    lent_reason = "viocluster-lent"

    def __init__(self) -> None:
        self.unlent: list[str] = []

    def snapshot(self) -> Snapshot:
        nodes = tuple(Node(n, "idle" if n in self.unlent else "drained", (), 2, 1024,
                           reason="" if n in self.unlent else f"viocluster-lent:{CID}")
                      for n in ("n1", "n2")) + (Node("n3", "allocated", (), 2, 1024),)
        jobs = (Job("1", "running", 1, ("n3",)), Job("2", "pending", 1), Job("3", "pending", 1))
        return Snapshot(jobs, nodes, self.borrowed_feature, self.lent_reason)

    def unlend(self, node: str) -> None:
        self.unlent.append(node)

    def lend(self, node: str, contract_id: str) -> None:
        pass


class BorrowerScheduler:
    borrowed_feature = "borrowed"
    lent_reason = "viocluster-lent"
    draining_reason = "viocluster-draining"

    def __init__(self) -> None:
        self.removed: list[str] = []

    def remove(self, node: str, reason: str, timeout: float = 30.0) -> RemoveResult:
        self.removed.append(node)
        return RemoveResult(node, requeued=(f"job-on-{node}",))


def _broker(tmp_path: Path, domain: str, role: Role, scheduler: Any, mode: str = "gradual",
            client: Peer | None = None) -> tuple[Broker, Peer, Executor]:
    peer = "a" if domain == "b" else "b"
    raw = {
        "domain": domain, "state_dir": str(tmp_path / f"state-{domain}"),
        "listen": {"host": "127.0.0.1", "port": 8444},
        "tls": {"cert": "x.crt", "key": "x.key", "ca": "ca.crt"},
        "peers": {peer: {"url": "https://127.0.0.1:8443", "fingerprint": FP}},
        "policy": {"reclamation": {"mode": mode, "per_interval": 1}},
        "lending": {"hosts": [{"node": n, "address": n, "account": "vpl{borrower}"}
                              for n in ("n1", "n2")]},
    }
    config = parse_config(raw, f"{domain}.yml", tmp_path)
    store = Store(config.db_path)
    c, t = Contract.propose(CID, role, "a", "b", 2, Needs(), Terms(mode=mode), 1.0)
    store.create(c, t)
    offered = tuple(HostOffer(h, h, "vpla", 2, 1024, 5, "b") for h, _n in NODES)
    for i, (state, changes) in enumerate([(S.AGREED, {"nodes": NODES, "offered": offered}),
                                          (S.PROVISIONING, {}), (S.ACTIVE, {})]):
        c, t = c.advance(state, 2.0 + i, state.value, **changes)
        store.save(c, t)
    client, executor = client or Peer(), Executor()
    broker = Broker(config, store, scheduler, executor, client,  # type: ignore[arg-type]
                    clock=lambda: 100.0)
    return broker, client, executor


def test_the_lender_takes_back_one_host_an_interval_with_stand_ins(tmp_path):
    scheduler = LenderScheduler()
    b, peer, executor = _broker(tmp_path, "b", Role.LENDER, scheduler)

    async def scenario():
        await b.tick()
        await b.drain()
        c = b.store.get(CID)
        assert (c.state, c.nodes) == (S.ACTIVE, (NODES[1],)), (c.state, c.nodes, c.reason)
        [first] = [m for m in peer.sent if isinstance(m, Reclaim)]
        assert first.hosts == ("n1",) and first.contract_id == CID
        assert executor.reclaimed == [["a-vm-0"]] and scheduler.unlent == ["n1"]
        steps = [(t.from_state, t.to_state) for t in b.store.history(CID)]
        assert steps[-1] == (S.ACTIVE, S.ACTIVE)

        await b.tick()  # the last host: the contract ends, as a whole reclaim
        await b.drain()
        assert b.store.get(CID).state is S.CLOSED, b.store.get(CID).reason
        reclaims = [m for m in peer.sent if isinstance(m, Reclaim)]
        assert len(reclaims) == 2 and reclaims[1].hosts == () and "hosts" not in reclaims[1].to_dict()
        assert executor.reclaimed == [["a-vm-0"], ["a-vm-1"]] and scheduler.unlent == ["n1", "n2"]

    asyncio.run(scenario())


def test_the_borrower_gives_up_the_nodes_of_the_hosts_taken_back_with_stand_ins(tmp_path):
    scheduler = BorrowerScheduler()
    a, _peer, _executor = _broker(tmp_path, "a", Role.BORROWER, scheduler)

    def reclaim(*hosts: str) -> Reclaim:
        return Reclaim(id=f"m{len(hosts)}{hosts}", sender="b", recipient="a", sent_at=100.0,
                       contract_id=CID, reason="own demand", hosts=hosts)

    async def scenario():
        status, body = await a.handle(reclaim("n1"))
        assert (status, body) == (200, {"state": "active", "requeued": ["job-on-a-vm-0"]})
        c = a.store.get(CID)
        assert (c.state, c.nodes, scheduler.removed) == (S.ACTIVE, (NODES[1],), ["a-vm-0"])
        # the lender's retry of the same step changes nothing
        assert await a.handle(reclaim("n1")) == (200, {"state": "active", "requeued": []})
        assert scheduler.removed == ["a-vm-0"]
        # the last host: the contract ends
        status, body = await a.handle(reclaim("n2"))
        assert (status, body["state"], body["requeued"]) == (200, "closed", ["job-on-a-vm-1"])
        assert a.store.get(CID).state is S.CLOSED and scheduler.removed == ["a-vm-0", "a-vm-1"]

    asyncio.run(scenario())


def test_a_drain_takes_the_idle_host_of_a_contract_back_and_drains_the_busy_one(tmp_path):
    """The borrower names the lent hosts that run its job: b needs both hosts back, n1 runs
    a's job (it drains), n2 does not (it comes back at once)."""
    scheduler = LenderScheduler()
    peer = Peer(busy=[CID], busy_hosts=[f"{CID}/n1"])
    b, _peer, executor = _broker(tmp_path, "b", Role.LENDER, scheduler, "drain", peer)

    async def scenario():
        await b.heartbeat("a")
        assert b.loan_busy_since == {f"{CID}/n1": 100.0}
        await b.tick()
        await b.drain()
        [reclaim] = [m for m in peer.sent if isinstance(m, Reclaim)]
        assert reclaim.hosts == ("n2",)
        assert b.store.get(CID).nodes == (NODES[0],) and scheduler.unlent == ["n2"]
        assert b.lending.draining == {f"{CID}/n1": "own demand needs 2 node(s)"}

    asyncio.run(scenario())


def test_a_borrower_that_names_only_contracts_has_every_host_of_a_busy_one_drained(tmp_path):
    scheduler = LenderScheduler()
    peer = Peer(busy=[CID])  # an older borrower: no busy_hosts
    b, _peer, _executor = _broker(tmp_path, "b", Role.LENDER, scheduler, "drain", peer)

    async def scenario():
        await b.heartbeat("a")
        assert b.loan_busy_since == {f"{CID}/n1": 100.0, f"{CID}/n2": 100.0}
        await b.tick()
        await b.drain()
        assert [m for m in peer.sent if isinstance(m, Reclaim)] == []
        assert set(b.lending.draining) == {f"{CID}/n1", f"{CID}/n2"}

    asyncio.run(scenario())


def test_the_borrower_names_the_hosts_whose_vm_runs_a_job(tmp_path):
    a, _peer, _executor = _broker(tmp_path, "a", Role.BORROWER, BorrowerScheduler())
    a.ctx.last_snapshot = Snapshot(
        (Job("7", "running", 1, ("a-vm-0",)),),
        (Node("a-vm-0", "allocated", ("borrowed",), 1, 512), Node("a-vm-1", "idle", ("borrowed",), 1, 512)),
        "borrowed", "viocluster-lent")

    async def scenario():
        status, body = await a.handle(Heartbeat(id="h1", sender="b", recipient="a", sent_at=100.0,
                                                contracts=((CID, "active"),)))
        assert status == 200
        assert (body["busy"], body["busy_hosts"]) == ([CID], [f"{CID}/n1"])

    asyncio.run(scenario())
