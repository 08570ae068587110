"""The C data path (violin._datapath) against the Python codec: same wire format, same forwarding
decisions, same drop reasons.

The engine serves a real UDP socket on loopback; its "TAP" here is one end of an AF_UNIX
SOCK_SEQPACKET socketpair, which keeps frame boundaries as a TAP does and needs no root. The
daemon on real TAPs in namespaces, mixed with the Python data path, is tests/switch/test_netns.py.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter

import pytest

from violin.codec import HEADER, Opener, ReplayWindow, Sealer
from violin.core import Settings
from violin.frames import BROADCAST, VNET_HDR_LEN, build_frame
from violin.native import NativeSwitch, available
from violin.peers import Peer

pytestmark = pytest.mark.skipif(not available(), reason="violin._datapath is not built")

NET = 9
SECRET = bytes(range(32))
MAC_LOCAL = bytes.fromhex("020000000001")
MAC_P1 = bytes.fromhex("020000000011")
MAC_P2 = bytes.fromhex("020000000022")


class Rig:
    """An engine on loopback with two peers, each a plain UDP socket of the test."""

    def __init__(self, cipher: str, start: bool = True) -> None:
        self.cipher = cipher
        self.tap, engine_tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.engine_tap = engine_tap
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = self.sock.getsockname()
        self.p1, self.p2, self.stranger = (self._udp() for _ in range(3))
        peers = [Peer("p1", "127.0.0.1", self.p1.getsockname()[1]),
                 Peer("p2", "127.0.0.1", self.p2.getsockname()[1])]
        self.switch = NativeSwitch(Settings(NET, 1, SECRET, cipher, 60.0, 64), peers)
        os.set_blocking(engine_tap.fileno(), False)
        self.engine = self.switch.attach(engine_tap.fileno(), self.sock.fileno())
        self.thread = threading.Thread(target=self.engine.run, daemon=True)
        if start:
            self.thread.start()
        self.tap.settimeout(2)

    @staticmethod
    def _udp() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        return s

    def sealer(self, sender: int, counter: int = 10**9, secret: bytes = SECRET,
               network: int = NET) -> Sealer:
        return Sealer(network, sender, secret, self.cipher, counter_start=counter)

    def opener(self) -> Opener:
        return Opener(NET, SECRET, self.cipher, own_sender_id=99)

    def stats(self) -> dict:
        return self.switch.stats()

    def close(self) -> None:
        self.engine.stop()
        if self.thread.ident is not None:
            self.thread.join(5)
        for s in (self.tap, self.engine_tap, self.sock, self.p1, self.p2, self.stranger):
            s.close()


@pytest.fixture(params=["aes-256-gcm", "chacha20-poly1305", "none"])
def rig(request):
    rig = Rig(request.param)
    yield rig
    rig.close()
    assert not rig.thread.is_alive()


def nothing_on(sock: socket.socket, wait: float = 0.3) -> bool:
    sock.settimeout(wait)
    try:
        sock.recv(70000)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(2)
    return False


def test_frames_from_the_tap_reach_python_openers(rig):
    frame = build_frame(BROADCAST, MAC_LOCAL, 0x88B5, b"hello" * 30)
    rig.tap.send(frame)
    for peer in (rig.p1, rig.p2):
        datagram = memoryview(peer.recv(70000))
        assert bytes(rig.opener().open(datagram, ReplayWindow())) == frame
    s = rig.stats()
    assert (s["tap_rx_frames"], s["tx_flooded_frames"], s["tx_datagrams"]) == (1, 1, 2)
    assert s["tap_rx_bytes"] == len(frame)


def test_python_sealed_datagrams_reach_the_tap_and_teach_the_fdb(rig):
    frame = build_frame(MAC_LOCAL, MAC_P1, 0x88B5, b"from p1" * 20)
    rig.p1.sendto(bytes(rig.sealer(11).seal(frame)), rig.addr)
    assert rig.tap.recv(70000) == frame
    assert rig.switch.fdb_entries()[0]["mac"] == "02:00:00:00:00:11"
    assert rig.switch.fdb_entries()[0]["peer"] == "p1"
    # a frame to the learnt MAC goes to p1 only
    rig.tap.send(build_frame(MAC_P1, MAC_LOCAL, 0x88B5, b"back" * 20))
    assert rig.p1.recv(70000)
    assert nothing_on(rig.p2)
    s = rig.stats()
    assert (s["tx_unicast_frames"], s["tx_flooded_frames"], s["fdb_entries"]) == (1, 0, 1)
    assert (s["rx_datagrams"], s["tap_tx_frames"], s["tap_tx_bytes"]) == (1, 1, len(frame))


def test_removed_peer_is_forgotten_and_gets_nothing(rig):
    rig.p1.sendto(bytes(rig.sealer(11).seal(build_frame(MAC_LOCAL, MAC_P1, 0x88B5, b"x" * 60))),
                  rig.addr)
    rig.tap.recv(70000)
    assert rig.switch.remove_peer("p1") is not None
    assert rig.switch.fdb_entries() == []
    rig.tap.send(build_frame(MAC_P1, MAC_LOCAL, 0x88B5, b"y" * 60))
    assert rig.p2.recv(70000)            # unknown again: flooded, to the one peer left
    assert nothing_on(rig.p1)
    rig.p1.sendto(bytes(rig.sealer(11, 2 * 10**9).seal(build_frame(MAC_LOCAL, MAC_P1, 0x88B5,
                                                                 b"z" * 60))), rig.addr)
    assert nothing_on(rig.tap)
    assert rig.stats()["drops"]["not_peer"] == 1
    assert rig.stats()["peers"] == 1


def test_bad_datagrams_are_dropped_by_reason_and_never_reach_the_tap(rig):
    frame = build_frame(MAC_LOCAL, MAC_P1, 0x88B5, b"good" * 20)
    sealer = rig.sealer(11)
    good = bytes(sealer.seal(frame))
    tampered = bytearray(sealer.seal(frame))
    tampered[-1] ^= 1
    bad = {
        "short": [b"\x01\x01", b""],
        "version": [b"\x02" + good[1:]],
        "network": [bytes(rig.sealer(11, network=NET + 1).seal(frame))],
        "own_sender": [bytes(rig.sealer(1).seal(frame))],
    }
    if rig.cipher != "none":
        bad["auth"] = [bytes(rig.sealer(12, 3 * 10**9, secret=bytes(32)).seal(frame)),
                       bytes(tampered),
                       HEADER.pack(1, 1, 0, NET, 11, 5 * 10**9) + os.urandom(100)]
    rig.p1.sendto(good, rig.addr)
    assert rig.tap.recv(70000) == frame
    for datagrams in bad.values():
        for d in datagrams:
            rig.p1.sendto(d, rig.addr)
    rig.p1.sendto(good, rig.addr)                                    # replayed
    rig.stranger.sendto(bytes(sealer.seal(frame)), rig.addr)         # not a peer
    rig.p1.sendto(bytes(sealer.seal(frame[:VNET_HDR_LEN + 10])), rig.addr)  # no Ethernet header
    late = build_frame(MAC_LOCAL, MAC_P1, 0x88B5, b"late" * 20)
    rig.p1.sendto(bytes(sealer.seal(late)), rig.addr)
    assert rig.tap.recv(70000) == late
    drops = rig.stats()["drops"]
    for reason, datagrams in bad.items():
        assert drops[reason] == len(datagrams), reason
    assert (drops["replay"], drops["not_peer"], drops["frame"]) == (1, 1, 1)
    assert nothing_on(rig.tap)


def test_runt_frames_from_the_tap_are_counted_not_sent(rig):
    rig.tap.send(b"\x00" * (VNET_HDR_LEN + 5))
    assert nothing_on(rig.p1)
    assert rig.stats()["drops"]["runt"] == 1


def test_a_full_fdb_refuses_new_macs_and_keeps_forwarding(rig):
    sealer = rig.sealer(11)
    for i in range(70):  # the table holds 64
        mac = bytes([2, 0, 0, 1, 0, i])
        rig.p1.sendto(bytes(sealer.seal(build_frame(MAC_LOCAL, mac, 0x88B5, b"m" * 40))), rig.addr)
        rig.tap.recv(70000)
    assert rig.stats()["fdb_entries"] == 64
    assert len(rig.switch.fdb_entries()) == 64


def test_the_engine_refuses_bad_arguments():
    from violin import _datapath

    with pytest.raises(ValueError, match="unknown cipher"):
        _datapath.Engine(0, 0, 1, 1, "rot13", b"", 1, 1.0, 8)
    with pytest.raises(ValueError, match="32 bytes"):
        _datapath.Engine(0, 0, 1, 1, "aes-256-gcm", b"short", 1, 1.0, 8)
    engine = _datapath.Engine.__new__(_datapath.Engine)
    with pytest.raises(RuntimeError, match="not initialised"):
        engine.stats()


@pytest.mark.parametrize("size", [1500, 9000, 60000], ids=["small", "large", "super-frame"])
def test_frames_of_every_size_cross_both_ways(rig, size):
    """Small frames are sealed with libsodium, large ones with OpenSSL: both ways, both open."""
    out = build_frame(MAC_P2, MAC_LOCAL, 0x88B5, os.urandom(size))
    rig.tap.send(out)
    assert bytes(rig.opener().open(memoryview(rig.p1.recv(70000)), ReplayWindow())) == out
    back = build_frame(MAC_LOCAL, MAC_P2, 0x88B5, os.urandom(size))
    rig.p2.sendto(bytes(rig.sealer(22).seal(back)), rig.addr)
    assert rig.tap.recv(70000) == back


def test_a_queued_burst_is_read_whole_good_frames_in_order_bad_ones_counted():
    """More datagrams than one read of the engine takes (recvmmsg, 16), queued before it runs,
    good and bad mixed, small and large: every good frame reaches the TAP once and in order,
    every bad datagram is counted under its reason."""
    rig = Rig("aes-256-gcm", start=False)
    try:
        rig.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rig.engine_tap.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sealer = rig.sealer(11)
        frames: list[bytes] = []
        expected: Counter = Counter()
        sent = 0
        for i in range(100):
            size = {37: 9000, 71: 60000}.get(i, 100 + i)
            frame = build_frame(MAC_LOCAL, MAC_P1, 0x88B5, i.to_bytes(2, "big") + os.urandom(size))
            good = bytes(sealer.seal(frame))
            burst = [(rig.p1, good)]
            frames.append(frame)
            if i % 3 == 0:
                burst.append((rig.p1, good))
                expected["replay"] += 1
            if i % 5 == 0:
                burst.append((rig.p1, good[:30]))
                expected["short"] += 1
            if i % 7 == 0:
                burst.append((rig.p1, HEADER.pack(1, 1, 0, NET, 11, 10**12 + i) + os.urandom(size)))
                expected["auth"] += 1
            if i % 11 == 0:
                burst.append((rig.stranger, bytes(rig.sealer(11, 10**13 + i).seal(frame))))
                expected["not_peer"] += 1
            for sock, datagram in burst:
                sock.sendto(datagram, rig.addr)
                sent += 1
        rig.thread.start()
        assert [rig.tap.recv(70000) for _ in frames] == frames
        deadline = time.monotonic() + 5
        while rig.stats()["rx_datagrams"] < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        s = rig.stats()
        assert (s["rx_datagrams"], s["tap_tx_frames"]) == (sent, len(frames))
        assert {k: v for k, v in s["drops"].items() if v} == expected
        assert nothing_on(rig.tap)
    finally:
        rig.close()
