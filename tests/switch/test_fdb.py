"""MAC learning table with ageing."""

from violin.fdb import Fdb

A, B = b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"
P1, P2 = ("10.201.0.1", 5300), ("10.201.0.2", 5300)


def test_learn_lookup_and_move():
    fdb = Fdb(ageing=10)
    assert fdb.lookup(A, 0) is None
    fdb.learn(A, P1, 0)
    assert fdb.lookup(A, 5) == P1
    fdb.learn(A, P2, 6)  # the MAC moved (a VM migrated)
    assert fdb.lookup(A, 7) == P2


def test_entries_age_out_unless_refreshed():
    fdb = Fdb(ageing=10)
    fdb.learn(A, P1, 0)
    fdb.learn(B, P1, 0)
    fdb.learn(B, P1, 8)
    assert fdb.lookup(A, 10.5) is None
    assert fdb.lookup(B, 10.5) == P1
    assert len(fdb) == 1
    assert [e.mac for e in fdb.entries(11)] == ["02:00:00:00:00:0b"]


def test_forget_peer():
    fdb = Fdb()
    fdb.learn(A, P1, 0)
    fdb.learn(B, P2, 0)
    assert fdb.forget_peer(P1) == 1
    assert fdb.lookup(A, 1) is None and fdb.lookup(B, 1) == P2


def test_full_table_refuses_new_macs_but_reuses_expired_slots():
    fdb = Fdb(ageing=10, max_entries=2)
    fdb.learn(A, P1, 0)
    fdb.learn(B, P1, 0)
    c = b"\x02" + bytes(4) + b"\x0c"
    fdb.learn(c, P2, 1)
    assert fdb.lookup(c, 1) is None and fdb.full_misses == 1
    fdb.learn(c, P2, 20)  # A and B expired meanwhile
    assert fdb.lookup(c, 20) == P2
