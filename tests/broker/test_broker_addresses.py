"""The borrower's VM address pool: the allocator (no I/O), the addresses in the contract store,
the borrow step taking them with the agreement, and the address line of playbooks/borrow.yml."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from broker.negotiation.contracts import Contract, ContractState, Role
from broker.negotiation.messages import Accept, Decline, HostOffer, Needs, Offer, Request, Terms
from broker.provisioning.executor import RunResult
from broker.scheduler.base import Node, RemoveResult
from broker.service.addresses import AddressPool, PoolError, PoolExhausted
from broker.service.broker import Broker
from broker.service.client import Reply
from broker.service.config import parse_config
from broker.service.store import AddressInUse, Store, StoreError

S = ContractState
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- the allocator


def test_the_lowest_free_addresses_are_given_with_the_prefix_length():
    pool = AddressPool.parse("10.207.1.64/26", 24)
    assert pool.size == 64 and str(pool) == "10.207.1.64/26 in 10.207.1.0/24"
    assert pool.allocate(3, []) == ("10.207.1.64/24", "10.207.1.65/24", "10.207.1.66/24")
    taken = ["10.207.1.64/24", "10.207.1.66", "10.9.9.9/24", "junk"]
    assert pool.allocate(2, taken) == ("10.207.1.65/24", "10.207.1.67/24")
    assert pool.free(taken) == 62
    assert pool.allocate(0, taken) == ()
    assert "10.207.1.100/24" in pool and "10.207.1.10" not in pool


def test_ranges_single_addresses_and_the_network_and_broadcast_addresses():
    pool = AddressPool.parse(["10.207.2.250-10.207.2.255", "10.207.2.0/30", "10.207.2.9"], 24)
    # 10.207.2.0 (network) and 10.207.2.255 (broadcast) are never given
    assert pool.size == 3 + 1 + 5
    assert pool.allocate(9, []) == tuple(
        f"10.207.2.{i}/24" for i in (1, 2, 3, 9, 250, 251, 252, 253, 254))
    assert "10.207.2.255" not in pool and "10.207.2.0" not in pool


def test_an_exhausted_pool_says_so():
    pool = AddressPool.parse("10.207.3.8-10.207.3.9", 16)
    assert pool.allocate(2, []) == ("10.207.3.8/16", "10.207.3.9/16")
    assert pool.free(["10.207.3.8/16", "10.207.3.9/16"]) == 0
    with pytest.raises(PoolExhausted, match="has 1 free address"):
        pool.allocate(2, ["10.207.3.8/16"])


@pytest.mark.parametrize(
    ("pool", "prefixlen", "where", "words"),
    [
        ("10.207.1.70/26", 24, "pool", "host bits are set; did you mean 10.207.1.64/26?"),
        ("10.207.0.0/23", 24, "pool", "does not fit in one /24 network"),
        (["10.207.1.0/28", "10.208.0.0/28"], 24, "pool[1]", "is outside 10.207.1.0/24"),
        (["10.207.1.0/28", "10.207.1.8-10.207.1.20"], 24, "pool[1]",
         "overlaps pool[0] (10.207.1.0/28)"),
        ("10.207.1.9-10.207.1.1", 24, "pool", "the range ends before it starts"),
        ("10.207.1", 24, "pool", "expected an IPv4 network or range"),
        ("fd00::/64", 24, "pool", "expected an IPv4 network or range"),
        ("300.1.1.1", 24, "pool", "expected an IPv4 network or range"),
        (7, 24, "pool", "got 7"),
        ([], 24, "pool", "the list is empty"),
        ("10.207.1.0/24", 31, "prefixlen", "expected an integer from 1 to 30"),
        ("10.207.1.0/24", True, "prefixlen", "got True"),
        ("10.207.1.255", 24, "pool", "no usable address"),
    ],
)
def test_wrong_pools_are_refused_naming_the_part(pool, prefixlen, where, words):
    with pytest.raises(PoolError) as err:
        AddressPool.parse(pool, prefixlen)
    assert err.value.where == where and words in err.value.message


# ---------------------------------------------------------------------- the store


def _agreed(store: Store, cid: str, addresses: tuple[tuple[str, str], ...],
            now: float = 1.0) -> Contract:
    c, t = Contract.propose(cid, Role.BORROWER, "a", "b", len(addresses), Needs(), Terms(), now)
    store.create(c, t)
    nodes = tuple((f"h{i}", n) for i, (n, _a) in enumerate(addresses))
    c, t = c.advance(S.AGREED, now + 1, "accepted", nodes=nodes, addresses=addresses)
    store.save(c, t)
    return c


def test_addresses_are_kept_with_the_contract_and_freed_when_it_ends(tmp_path):
    path = tmp_path / "vpl" / "contracts.db"
    store = Store(path)
    c1 = _agreed(store, "a-c1", (("a-v1-0", "10.207.1.10/24"), ("a-v1-1", "10.207.1.11/24")))
    _agreed(store, "a-c2", (("a-v2-0", "10.207.1.12/24"),))
    store.close()

    again = Store(path)  # a restart: nothing is lost, nothing is handed out twice
    assert again.get("a-c1") == c1 and c1.address_of["a-v1-1"] == "10.207.1.11/24"
    assert again.addresses_in_use() == {
        "10.207.1.10": "a-c1", "10.207.1.11": "a-c1", "10.207.1.12": "a-c2"}
    pool = AddressPool.parse("10.207.1.10-10.207.1.13", 24)
    assert pool.allocate(1, again.addresses_in_use()) == ("10.207.1.13/24",)

    # an open contract's address cannot be given to another one: refused, nothing written
    with pytest.raises(AddressInUse,
                       match="10.207.1.12/24 of a-v3-0 is held by the open contract a-c2"):
        _agreed(again, "a-c3", (("a-v3-0", "10.207.1.12/24"),))
    assert again.get("a-c3").state is S.PROPOSED and again.get("a-c3").addresses == ()

    # closing or failing a contract frees its addresses
    c1 = again.get("a-c1")
    c1r, t = c1.advance(S.RECLAIMING, 5.0, "returning")
    again.save(c1r, t)
    assert "10.207.1.10" in again.addresses_in_use()  # still open: still taken
    again.save(*c1r.advance(S.CLOSED, 6.0, "returned"))
    c2 = again.get("a-c2")
    again.save(*c2.advance(S.FAILED, 6.0, "borrow playbook failed"))
    assert again.addresses_in_use() == {}
    assert again.get("a-c1").addresses == c1.addresses  # kept on record
    assert pool.allocate(1, again.addresses_in_use()) == ("10.207.1.10/24",)


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE contracts (
    id TEXT PRIMARY KEY, role TEXT NOT NULL, borrower TEXT NOT NULL, lender TEXT NOT NULL,
    state TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    requested INTEGER NOT NULL, needs TEXT NOT NULL, terms TEXT NOT NULL, offered TEXT NOT NULL,
    nodes TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE transitions (seq INTEGER PRIMARY KEY AUTOINCREMENT, contract_id TEXT NOT NULL
    REFERENCES contracts(id), at REAL NOT NULL, from_state TEXT, to_state TEXT NOT NULL,
    reason TEXT NOT NULL);
CREATE TABLE messages (id TEXT PRIMARY KEY, sender TEXT NOT NULL, type TEXT NOT NULL,
    digest TEXT NOT NULL, received_at REAL NOT NULL, status INTEGER NOT NULL,
    response TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
INSERT INTO contracts VALUES ('a-old', 'borrower', 'a', 'b', 'active', 1.0, 2.0, 1,
    '{"cpus": 1, "memory_mb": 0, "disk_gb": 0}',
    '{"mode": "immediate", "lease_s": 3600.0, "per_interval": 1}', '[]',
    '[["h1", "a-vold-0"]]', 'up');
"""


def test_a_database_of_the_previous_schema_is_migrated_in_place(tmp_path):
    path = tmp_path / "contracts.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.close()
    store = Store(path)
    old = store.get("a-old")
    assert old.state is S.ACTIVE and old.nodes == (("h1", "a-vold-0"),) and old.addresses == ()
    _agreed(store, "a-new", (("a-vnew-0", "10.207.1.10/24"),))
    store.close()
    again = Store(path)
    assert again.get("a-new").addresses == (("a-vnew-0", "10.207.1.10/24"),)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("4",)
    assert db.execute("SELECT count(*) FROM refusals").fetchone() == (0,)  # schema 3's table
    assert db.execute("SELECT count(*) FROM drains").fetchone() == (0,)  # schema 4's table
    db.close()


def test_a_database_of_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "contracts.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='9' WHERE key='schema'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="has schema 9"):
        Store(path)


# ---------------------------------------------------------------------- borrowing with a pool

FP = "sha256:" + "ab" * 32


class FakeClient:
    """Peer b: offers as many hosts as asked (up to five); accepts every acceptance."""

    def __init__(self, on_request: Any = None) -> None:
        self.sent: list[Any] = []
        self.on_request = on_request

    async def send(self, peer: Any, message: Any) -> Reply:
        self.sent.append(message)
        if isinstance(message, Request):
            if self.on_request is not None:
                self.on_request()
            hosts = tuple(HostOffer(f"h{i}", f"10.207.9.{i}", "vplb", 2, 1024, 5, "site-b", 0.1 * i)
                          for i in range(min(message.nodes, 5)))
            offer = Offer(id=f"m-o{len(self.sent)}", sender="b", recipient="a", sent_at=1.0,
                          contract_id=message.contract_id, hosts=hosts, terms=Terms())
            return Reply(200, {"reply": offer.to_dict()})
        return Reply(200, {"state": "agreed"})

    async def close(self) -> None:
        pass


class FakeExecutor:
    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    def provision(self, variables: dict[str, Any], ident: str) -> RunResult:
        self.runs.append(variables)
        return RunResult("borrow.yml", ident, True, "successful", 0, 0.0)

    def reclaim(self, variables: dict[str, Any], ident: str) -> RunResult:
        return RunResult("reclaim.yml", ident, True, "successful", 0, 0.0)


class FakeScheduler:
    def admit(self, node: str, timeout: float = 30.0) -> Node:
        return Node(node, "idle", ("borrowed",))

    def remove(self, node: str, reason: str, timeout: float = 30.0) -> RemoveResult:
        return RemoveResult(node)


def _config(tmp_path: Path, pool: Any = "10.207.1.10-10.207.1.12") -> Any:
    raw = {
        "domain": "a", "state_dir": str(tmp_path / "state"),
        "listen": {"host": "127.0.0.1", "port": 8443},
        "tls": {"cert": "a.crt", "key": "a.key", "ca": "ca.crt"},
        "peers": {"b": {"url": "https://127.0.0.1:8444", "fingerprint": FP}},
    }
    if pool is not None:
        raw["vm_addresses"] = {"pool": pool, "prefixlen": 24}
    return parse_config(raw, "a.yml", tmp_path)


def _broker(config: Any, client: FakeClient | None = None) -> Broker:
    return Broker(config, Store(config.db_path), FakeScheduler(),  # type: ignore[arg-type]
                  FakeExecutor(), client or FakeClient())  # type: ignore[arg-type]


def test_the_borrower_gives_each_vm_a_pool_address_and_asks_for_no_more(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="broker")
    config = _config(tmp_path)

    async def scenario() -> None:
        a = _broker(config)
        [c] = await a.borrow(5, 0)
        await a.drain()
        [request] = [m for m in a.client.sent if isinstance(m, Request)]
        assert request.nodes == 3  # three free addresses
        c = a.store.get(c.id)
        assert c.state is S.ACTIVE, c.reason
        assert [x for _n, x in c.addresses] == [
            "10.207.1.10/24", "10.207.1.11/24", "10.207.1.12/24"]
        [run] = a.executor.runs
        assert [(vm["name"], vm["ip"]) for vm in run["trade_vms"]] == list(c.addresses)
        assert a.status()["contracts"][0]["addresses"] == [x for _n, x in c.addresses]

        # every address is held by an open contract: no request at all, a logged reason
        assert await a.borrow(2, 3) == []
        assert len(a.store.contracts()) == 1
        assert "has no free address" in caplog.text

        # the contract ends: its addresses are free again
        await a.give_back(c, "idle")
        assert a.store.get(c.id).state is S.CLOSED
        [c2] = await a.borrow(1, 0)
        await a.drain()
        assert a.store.get(c2.id).addresses == ((c2.node_names[0], "10.207.1.10/24"),)
        a.store.close()

    asyncio.run(scenario())


def test_a_restarted_borrower_does_not_hand_out_an_address_twice(tmp_path):
    config = _config(tmp_path)

    async def first() -> None:
        a = _broker(config)
        await a.borrow(2, 0)
        await a.drain()
        a.store.close()

    async def second() -> None:
        a = _broker(config)
        [c] = await a.borrow(3, 2)
        await a.drain()
        [request] = [m for m in a.client.sent if isinstance(m, Request)]
        assert request.nodes == 1
        assert [x for _n, x in a.store.get(c.id).addresses] == ["10.207.1.12/24"]
        held = sorted(a.store.addresses_in_use())
        assert held == ["10.207.1.10", "10.207.1.11", "10.207.1.12"]
        a.store.close()

    asyncio.run(first())
    asyncio.run(second())


def test_addresses_gone_before_the_agreement_decline_the_offer_cleanly(tmp_path, caplog):
    config = _config(tmp_path, "10.207.1.10/32")
    store_holder: list[Broker] = []

    def someone_takes_the_address() -> None:
        _agreed(store_holder[0].store, "a-other", (("a-vo-0", "10.207.1.10/24"),))

    async def scenario() -> None:
        a = _broker(config, FakeClient(on_request=someone_takes_the_address))
        store_holder.append(a)
        assert await a.borrow(1, 0) == []
        await a.drain()
        # the refused attempt is not kept as a contract; it is counted against the peer
        assert [c.id for c in a.store.contracts()] == ["a-other"]
        [refused] = a.store.refusals()
        assert refused.peer == "b" and refused.count == 1
        assert "no free address in the VM address pool" in refused.last_reason
        [decline] = [m for m in a.client.sent if isinstance(m, Decline)]
        assert "no free address" in decline.reason
        assert not [m for m in a.client.sent if isinstance(m, Accept)]
        assert a.executor.runs == []
        a.store.close()

    asyncio.run(scenario())


def test_without_a_pool_the_playbook_gets_no_ip(tmp_path):
    config = _config(tmp_path, pool=None)
    assert config.vm_pool is None

    async def scenario() -> None:
        a = _broker(config)
        [c] = await a.borrow(2, 0)
        await a.drain()
        assert a.store.get(c.id).addresses == ()
        assert all("ip" not in vm for vm in a.executor.runs[0]["trade_vms"])
        a.store.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------- playbooks/borrow.yml


def _tasks(tasks: list[dict]) -> list[dict]:
    """Every task, those inside blocks (and their rescue/always) included."""
    out = []
    for task in tasks:
        out.append(task)
        for key in ("block", "rescue", "always"):
            out.extend(_tasks(task.get(key, [])))
    return out


def _address_template() -> str:
    plays = yaml.safe_load((REPO / "playbooks" / "borrow.yml").read_text())
    found = [task["cow_vm"]["address"] for play in plays for task in _tasks(play.get("tasks", []))
             if "cow_vm" in task]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"trade_vm": {"name": "a-v1-0", "ip": "10.207.1.70/24"}}, "10.207.1.70/24"),
        ({"trade_vm": {"name": "a-v1-0"}, "trade_vm_prefix": "10.1.0", "trade_octet": 77},
         "10.1.0.77/24"),
        ({"trade_vm": {"name": "a-v1-0", "ip": ""}, "trade_vm_prefix": "10.1.0", "trade_octet": 77,
          "trade_vm_prefixlen": 16}, "10.1.0.77/16"),
    ],
)
def test_the_playbook_uses_the_given_ip_and_falls_back_to_the_derived_address(variables, expected):
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    assert env.from_string(_address_template()).render(**variables) == expected
