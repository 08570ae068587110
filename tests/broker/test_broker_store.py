"""The contract store on a real SQLite file: WAL, atomic transitions, nothing lost on reopen."""

from __future__ import annotations

import sqlite3

import pytest

from broker.negotiation.contracts import Contract, ContractState, Role
from broker.negotiation.messages import HostOffer, Needs, Terms
from broker.service.store import StaleContract, Store, StoreError

S = ContractState


def _new(store: Store, cid: str = "a-c1") -> Contract:
    c, t = Contract.propose(cid, Role.BORROWER, "a", "b", 2, Needs(1, 128, 1), Terms(), now=1.0)
    store.create(c, t)
    return c


def test_wal_mode_and_a_contract_survives_reopening(tmp_path):
    path = tmp_path / "vbk" / "contracts.db"
    store = Store(path)
    assert store.journal_mode == "wal"
    c = _new(store)
    c, t = c.advance(
        S.AGREED, 2.0, "offer accepted",
        offered=(HostOffer("h1", "10.204.1.1", "vbka", 2, 1024, 5, "site-b", 0.3),), nodes=(("h1", "a-vc1-0"),),
    )
    store.save(c, t)
    store.close()
    again = Store(path)
    assert again.get("a-c1") == c
    assert [(x.from_state, x.to_state) for x in again.history("a-c1")] == [
        (None, S.PROPOSED), (S.PROPOSED, S.AGREED)
    ]


def test_a_stale_save_is_refused_and_changes_nothing(tmp_path):
    store = Store(tmp_path / "c.db")
    c = _new(store)
    agreed, t1 = c.advance(S.AGREED, 2.0, "first")
    store.save(agreed, t1)
    closed, t2 = c.advance(S.CLOSED, 3.0, "based on the old state")
    with pytest.raises(StaleContract, match="is agreed, not proposed"):
        store.save(closed, t2)
    assert store.get("a-c1").state is S.AGREED
    assert len(store.history("a-c1")) == 2


def test_creating_a_contract_twice_is_refused(tmp_path):
    store = Store(tmp_path / "c.db")
    _new(store)
    with pytest.raises(StaleContract, match="exists already"):
        _new(store)


def test_a_failed_transaction_leaves_nothing(tmp_path):
    store = Store(tmp_path / "c.db")
    c = _new(store)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.save(*c.advance(S.AGREED, 2.0, "x"))
            raise RuntimeError("crash in the middle")
    assert store.get("a-c1").state is S.PROPOSED
    assert len(store.history("a-c1")) == 1


def test_message_ids_are_remembered(tmp_path):
    store = Store(tmp_path / "c.db")
    assert store.seen("m-1") is None
    store.remember("m-1", "b", "offer", "d1", 1.0, 200, {"ok": True})
    store.remember("m-1", "b", "offer", "d2", 2.0, 500, {"ok": False})  # ignored: first wins
    seen = store.seen("m-1")
    assert (seen.digest, seen.status, seen.response) == ("d1", 200, {"ok": True})


def test_a_file_that_is_not_a_database_gives_a_clear_error(tmp_path):
    bad = tmp_path / "c.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open the contract database"):
        Store(bad)


def test_other_readers_see_committed_contracts_while_the_broker_holds_the_file(tmp_path):
    path = tmp_path / "c.db"
    store = Store(path)
    _new(store)
    other = sqlite3.connect(path)
    assert other.execute("SELECT state FROM contracts").fetchall() == [("proposed",)]
    other.close()


# ---------------------------------------------------------------------- hygiene


def test_refused_proposals_are_counted_per_peer_not_kept(tmp_path):
    path = tmp_path / "contracts.db"
    store = Store(path)
    for i in range(200):
        c = _new(store, f"a-r{i}")
        store.drop_refused(c, 10.0 + i, f"b did not offer: lending policy offers 0 now ({i})")
    kept = _new(store, "a-kept")
    kept, t = kept.advance(S.AGREED, 2.0, "offer accepted", nodes=(("h1", "a-vk-0"),))
    store.save(kept, t)
    with pytest.raises(StaleContract, match="not proposed"):  # an agreed one is never dropped
        store.drop_refused(kept, 3.0, "late decline")
    store.close()
    again = Store(path)
    assert [c.id for c in again.contracts()] == ["a-kept"]
    [r] = again.refusals()
    assert (r.peer, r.role, r.count, r.first_at, r.last_at) == ("b", Role.BORROWER, 200, 10.0, 209.0)
    assert r.last_reason.endswith("(199)")
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM transitions").fetchone() == (2,)  # a-kept's only
    db.close()


def test_closed_contracts_past_the_retention_are_compacted_and_the_rest_kept(tmp_path):
    path = tmp_path / "contracts.db"
    store = Store(path)
    day = 86400.0
    old = _new(store, "a-old")
    old, t = old.advance(S.AGREED, 2.0, "agreed")
    store.save(old, t)
    store.save(*old.advance(S.FAILED, 3.0, "borrow playbook failed"))
    recent = _new(store, "a-recent")
    store.save(*recent.advance(S.CLOSED, 20 * day, "withdrawn"))
    still_open = _new(store, "a-open")  # open contracts are never compacted, however old
    store.remember("m-old", "b", "heartbeat", "x", 1.0, 200, {})
    store.remember("m-new", "b", "heartbeat", "y", 40 * day, 200, {})
    done = store.compact(now=40 * day, retention_s=30 * day)
    assert (done.contracts, done.messages) == (1, 1)
    store.close()
    again = Store(path)
    assert sorted(c.id for c in again.contracts()) == ["a-open", "a-recent"]
    assert again.history("a-old") == []
    assert [t.reason for t in again.history("a-recent")] == ["proposed", "withdrawn"]
    assert again.get(still_open.id).state is S.PROPOSED
    assert again.seen("m-old") is None and again.seen("m-new") is not None
    assert again.compact(now=40 * day, retention_s=30 * day).contracts == 0


def test_a_borrower_turned_down_again_and_again_keeps_one_row(tmp_path):
    """The lab's pile-up: every refused borrow attempt used to persist a closed contract."""
    import asyncio

    from broker.negotiation.messages import Decline, Request
    from broker.service.broker import Broker
    from broker.service.client import Reply
    from broker.service.config import parse_config

    class DecliningPeer:
        """Peer b's API, faked: it declines every request, as a lender with nothing idle."""

        async def send(self, peer, message):
            if isinstance(message, Request):
                no = Decline(id="m-d", sender="b", recipient="a", sent_at=1.0,
                             contract_id=message.contract_id,
                             reason="lending policy offers 0 now")
                return Reply(200, {"reply": no.to_dict()})
            return Reply(200, {})

        async def close(self):
            pass

    config = parse_config({
        "domain": "a", "state_dir": str(tmp_path / "state"),
        "listen": {"host": "127.0.0.1", "port": 8443},
        "tls": {"cert": "a.crt", "key": "a.key", "ca": "ca.crt"},
        "peers": {"b": {"url": "https://127.0.0.1:8444", "fingerprint": "sha256:" + "ab" * 32}},
    }, "a.yml", tmp_path)
    now = [1000.0]

    async def scenario() -> None:
        a = Broker(config, Store(config.db_path), None, None, DecliningPeer(),  # type: ignore[arg-type]
                   clock=lambda: now[0])
        for _ in range(100):
            assert await a.borrow(1, 0) == []
            now[0] += 31.0  # past the quiet time after a decline (3 intervals)
        assert a.store.contracts() == []
        [r] = a.store.refusals()
        assert r.count == 100 and "lending policy offers 0 now" in r.last_reason
        assert a.status()["refusals"][0]["count"] == 100
        a.store.close()

    asyncio.run(scenario())
    assert (tmp_path / "state" / "contracts.db").stat().st_size < 200_000
