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
