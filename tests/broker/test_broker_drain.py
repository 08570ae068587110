"""The live lender carries out the trade core's reclamation: under ``drain`` a loan whose
borrower reports a job on it is not taken back until the job has ended; under ``immediate`` it
is taken back at once. Scheduler, executor and peer are stand-ins (the decisions are the
core's, tested in tests/policy/test_trade_core.py; this checks the interpreter)."""

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


class Borrower:
    """Peer a: answers heartbeats saying whether its job runs on the loan; confirms reclaims."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.busy = True

    async def send(self, peer: Any, message: Any) -> Reply:
        self.sent.append(message)
        if isinstance(message, Heartbeat):
            return Reply(200, {"contracts": [[c, s] for c, s in message.contracts],
                               "busy": [CID] if self.busy else []})
        return Reply(200, {"state": "closed", "requeued": []})

    async def close(self) -> None:
        pass


class Executor:
    def reclaim(self, variables: dict[str, Any], ident: str) -> RunResult:
        return RunResult("reclaim.yml", ident, True, "successful", 0, 0.0)


class Scheduler:
    """Domain b: n1 lent to a, n2 busy with b's own job, one more of b's jobs waiting: b
    needs one node back (n_a = 2 - (2 - 1) = 1)."""

    borrowed_feature = "borrowed"
    lent_reason = "viocluster-lent"

    def __init__(self) -> None:
        self.unlent: list[str] = []

    def snapshot(self) -> Snapshot:
        lent = "n1" not in self.unlent
        nodes = (Node("n1", "drained" if lent else "idle", (), 2, 1024,
                      reason=f"viocluster-lent:{CID}" if lent else ""),
                 Node("n2", "allocated", (), 2, 1024))
        jobs = (Job("1", "running", 1, ("n2",)), Job("2", "pending", 1))
        return Snapshot(jobs, nodes, self.borrowed_feature, self.lent_reason)

    def unlend(self, node: str) -> None:
        self.unlent.append(node)

    def lend(self, node: str, contract_id: str) -> None:
        pass

    def remove(self, node: str, reason: str, timeout: float = 30.0) -> RemoveResult:
        return RemoveResult(node)


def _lender(tmp_path: Path, mode: str, fresh: bool = True) -> Broker:
    raw = {
        "domain": "b", "state_dir": str(tmp_path / "state"),
        "listen": {"host": "127.0.0.1", "port": 8444},
        "tls": {"cert": "b.crt", "key": "b.key", "ca": "ca.crt"},
        "peers": {"a": {"url": "https://127.0.0.1:8443", "fingerprint": FP}},
        "policy": {"reclamation": {"mode": mode}},
        "lending": {"hosts": [{"node": "n1", "address": "n1", "account": "vpl{borrower}"}]},
    }
    config = parse_config(raw, "b.yml", tmp_path)
    store = Store(config.db_path)
    if fresh:  # else the broker starts again on the store an earlier one left
        c, t = Contract.propose(CID, Role.LENDER, "a", "b", 1, Needs(), Terms(mode=mode), 1.0)
        store.create(c, t)
        steps = [(S.AGREED, {"nodes": (("n1", "a-vm-0"),),
                             "offered": (HostOffer("n1", "n1", "vpla", 2, 1024, 5, "b"),)}),
                 (S.PROVISIONING, {}), (S.ACTIVE, {})]
        for i, (state, changes) in enumerate(steps):
            c, t = c.advance(state, 2.0 + i, state.value, **changes)
            store.save(c, t)
    clock = [100.0]
    broker = Broker(config, store, Scheduler(), Executor(), Borrower(),  # type: ignore[arg-type]
                    clock=lambda: clock[0])
    broker.test_clock = clock  # type: ignore[attr-defined]
    return broker


def _reclaims(b: Broker) -> list[Reclaim]:
    return [m for m in b.client.sent if isinstance(m, Reclaim)]  # type: ignore[attr-defined]


def test_drain_takes_a_busy_loan_back_only_after_its_job_ends(tmp_path):
    async def scenario() -> None:
        b = _lender(tmp_path, "drain")
        await b.heartbeat("a")  # the borrower says its job runs on the loan
        assert b.loan_busy_since == {f"{CID}/n1": 100.0}  # the peer names contracts only
        await b.tick()
        await b.drain()
        assert b.last_intent == "reclaim 1"
        assert _reclaims(b) == [] and b.draining == {CID: "own demand needs 1 node(s)"}
        assert b.store.get(CID).state is S.ACTIVE
        assert b.status()["draining"] == [CID]

        b.client.busy = False  # type: ignore[attr-defined]  # the job ended
        b.test_clock[0] = 110.0  # type: ignore[attr-defined]
        await b.tick()  # decides on what it knew, then hears the loan is idle
        await b.drain()
        assert _reclaims(b) == []
        b.test_clock[0] = 120.0  # type: ignore[attr-defined]
        await b.tick()
        await b.drain()
        [reclaim] = _reclaims(b)
        assert reclaim.contract_id == CID and reclaim.reason.startswith("drained")
        assert b.store.get(CID).state is S.CLOSED
        assert b.scheduler.unlent == ["n1"]  # type: ignore[attr-defined]
        assert b.draining == {}

    asyncio.run(scenario())


def test_immediate_takes_a_busy_loan_back_at_once(tmp_path):
    async def scenario() -> None:
        b = _lender(tmp_path, "immediate")
        await b.heartbeat("a")
        await b.tick()
        await b.drain()
        [reclaim] = _reclaims(b)
        assert reclaim.reason == "own demand needs 1 node(s)"
        assert b.store.get(CID).state is S.CLOSED

    asyncio.run(scenario())


def test_a_drain_and_its_start_survive_a_restart_of_the_lender(tmp_path):
    async def scenario() -> None:
        b = _lender(tmp_path, "drain")
        await b.heartbeat("a")
        await b.tick()
        await b.drain()
        assert b.draining == {CID: "own demand needs 1 node(s)"}
        b.store.close()

        again = _lender(tmp_path, "drain", fresh=False)  # the broker restarted
        again.test_clock[0] = 130.0  # type: ignore[attr-defined]
        assert again.draining == {CID: "own demand needs 1 node(s)"}
        assert again.lending.draining_since == {f"{CID}/n1": 100.0}  # not moved by the restart
        assert again.status()["draining"] == [CID]
        await again.heartbeat("a")  # the job still runs: nothing is taken back
        await again.tick()
        await again.drain()
        assert _reclaims(again) == []
        again.client.busy = False  # type: ignore[attr-defined]  # the job ended
        again.test_clock[0] = 140.0  # type: ignore[attr-defined]
        await again.heartbeat("a")
        await again.tick()
        await again.drain()
        [reclaim] = _reclaims(again)
        assert reclaim.reason.startswith("drained")
        assert again.store.get(CID).state is S.CLOSED
        assert again.store.drains() == {}  # the books forget a loan that came back

    asyncio.run(scenario())
