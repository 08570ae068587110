"""Forwarding decisions of the sans-I/O switch: flooding, learning, full mesh, counters."""

from __future__ import annotations

import pytest

from violin.codec import Drop, Sealer
from violin.core import Settings, Switch
from violin.frames import BROADCAST, build_frame
from violin.peers import Peer

SECRET = bytes(32)
MAC_LOCAL = bytes.fromhex("020000000001")
MAC_H2 = bytes.fromhex("020000000002")
MAC_H3 = bytes.fromhex("020000000003")
H2, H3 = ("10.201.0.2", 5300), ("10.201.0.3", 5300)


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def make(clock=None):
    peers = [Peer("h2", *H2), Peer("h3", *H3)]
    return Switch(Settings(network_id=5, sender_id=1, secret=SECRET, fdb_ageing=30), peers,
                  clock=clock or Clock())


def from_host(sender_id: int, src_mac: bytes, dst_mac: bytes = MAC_LOCAL, counter: int = 1000):
    sealer = Sealer(5, sender_id, SECRET, counter_start=counter)
    return memoryview(bytes(sealer.seal(build_frame(dst_mac, src_mac, 0x0800, b"p" * 50))))


def local_frame(dst: bytes) -> memoryview:
    return memoryview(build_frame(dst, MAC_LOCAL, 0x0800, b"d" * 50))


def test_broadcast_and_unknown_unicast_are_flooded_to_every_peer():
    sw = make()
    for dst in (BROADCAST, bytes.fromhex("01005e000001"), MAC_H2):
        datagram, targets = sw.from_tap(local_frame(dst))
        assert set(targets) == {H2, H3} and datagram is not None
    assert sw.tx.flooded == 3 and sw.tx.unicast == 0


def test_learnt_unicast_goes_to_one_peer_only():
    sw = make()
    frame = sw.from_peer(H2, from_host(2, MAC_H2))
    assert bytes(frame[16:22]) == MAC_H2
    _, targets = sw.from_tap(local_frame(MAC_H2))
    assert targets == (H2,)
    assert sw.tx.unicast == 1 and sw.tx.flooded == 0


def test_learning_ages_out_then_floods_again():
    clock = Clock()
    sw = make(clock)
    sw.from_peer(H2, from_host(2, MAC_H2))
    clock.now += 31
    _, targets = sw.from_tap(local_frame(MAC_H2))
    assert set(targets) == {H2, H3}


def test_datagram_from_a_non_peer_is_dropped_and_not_learnt():
    sw = make()
    with pytest.raises(Drop):
        sw.from_peer(("10.201.0.9", 5300), from_host(9, MAC_H3))
    assert sw.rx.drops["not_peer"] == 1 and len(sw.fdb) == 0


def test_removed_peer_gets_nothing_and_its_macs_are_forgotten():
    sw = make()
    sw.from_peer(H2, from_host(2, MAC_H2))
    assert sw.remove_peer("h2").key == H2
    _, targets = sw.from_tap(local_frame(MAC_H2))
    assert targets == (H3,)
    with pytest.raises(Drop):
        sw.from_peer(H2, from_host(2, MAC_H2, counter=5000))
    assert sw.rx.drops["not_peer"] == 1


def test_no_peers_means_drop_not_crash():
    sw = Switch(Settings(5, 1, SECRET))
    assert sw.from_tap(local_frame(BROADCAST)) == (None, ())
    assert sw.tx.drops["no_peers"] == 1


def test_runt_frame_from_tap_is_dropped():
    sw = make()
    assert sw.from_tap(memoryview(b"\0" * 20)) == (None, ())
    assert sw.tx.drops["runt"] == 1


def test_authenticated_but_too_short_frame_is_dropped():
    sw = make()
    datagram = memoryview(bytes(Sealer(5, 2, SECRET, counter_start=1).seal(b"\0" * 12)))
    with pytest.raises(Drop):
        sw.from_peer(H2, datagram)
    assert sw.rx.drops["frame"] == 1


def test_replace_config_peers_keeps_runtime_ones():
    sw = make()
    sw.add_peer(Peer("vm1", "10.201.0.50", 5300, "runtime"))
    added, removed = sw.replace_config_peers([Peer("h3", *H3), Peer("h4", "10.201.0.4", 5300)])
    assert added == ["h4"] and removed == ["h2"]
    assert [p.name for p in sw.peers.list()] == ["h3", "h4", "vm1"]


def test_peer_conflicts_are_refused_and_change_nothing():
    sw = make()
    with pytest.raises(ValueError, match="already belongs"):
        sw.add_peer(Peer("other", *H2))
    with pytest.raises(ValueError, match="already used"):
        sw.add_peer(Peer("h2", "10.201.0.77", 5300))
    assert [p.name for p in sw.peers.list()] == ["h2", "h3"]
    assert sw.add_peer(Peer("h2", *H2)) is False


def test_stats_snapshot_has_every_drop_reason():
    stats = make().stats()
    assert {"not_peer", "replay", "auth", "network", "short", "version", "runt"} <= set(stats["drops"])
    assert stats["peers"] == 2
