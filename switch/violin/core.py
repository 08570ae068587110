"""The switch itself, without I/O: what to do with a frame from the TAP or a datagram from a peer.

``Switch.from_tap`` takes what the TAP handed over (vnet header + frame) and returns the sealed
datagram and the peers to send it to; ``Switch.from_peer`` takes a datagram and its source
address and returns the frame to write to the TAP, or raises ``Drop``. Frames from peers are
never sent on to other peers (full mesh), only to the TAP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .codec import Drop, Opener, Sealer
from .counters import RxCounters, TxCounters, snapshot
from .fdb import Fdb
from .frames import MIN_FRAME, SRC, VNET_HDR_LEN
from .peers import Peer, PeerKey, PeerTable


@dataclass(frozen=True)
class Settings:
    network_id: int
    sender_id: int
    secret: bytes
    cipher: str = "aes-256-gcm"
    fdb_ageing: float = 300.0
    fdb_max_entries: int = 8192


class Switch:
    def __init__(self, settings: Settings, peers: list[Peer] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.fdb = Fdb(settings.fdb_ageing, settings.fdb_max_entries)
        self.peers = PeerTable(peers)
        self.sealer = Sealer(settings.network_id, settings.sender_id, settings.secret, settings.cipher)
        self.opener = Opener(settings.network_id, settings.secret, settings.cipher,
                             own_sender_id=settings.sender_id)
        self.tx = TxCounters()
        self.rx = RxCounters()

    # ------------------------------------------------------------------ TAP -> peers
    def from_tap(self, frame: memoryview) -> tuple[memoryview | None, tuple[PeerKey, ...]]:
        """Decides where a frame read from the TAP goes. Returns (datagram, peers); the datagram
        view is valid until the next call."""
        tx = self.tx
        n = len(frame)
        tx.frames += 1
        tx.bytes += n
        if n < MIN_FRAME:
            tx.drops["runt"] += 1
            return None, ()
        peers = self.peers
        unicast = False
        targets = peers.keys
        if not frame[VNET_HDR_LEN] & 1:  # not broadcast / multicast: ask the FDB
            peer = self.fdb.lookup(frame[VNET_HDR_LEN:VNET_HDR_LEN + 6].tobytes(), self.clock())
            if peer is not None and peer in peers.by_key:
                targets = (peer,)
                unicast = True
        if not targets:
            tx.drops["no_peers"] += 1
            return None, ()
        try:
            datagram = self.sealer.seal(frame)
        except Drop as drop:
            tx.drops[drop.reason] += 1
            return None, ()
        if unicast:
            tx.unicast += 1
        else:
            tx.flooded += 1
        return datagram, targets

    # ------------------------------------------------------------------ peer -> TAP
    def from_peer(self, source: PeerKey, datagram: memoryview) -> memoryview:
        """Checks a datagram from ``source`` and returns the frame for the TAP (valid until the
        next call); raises Drop(reason) and counts it otherwise."""
        rx = self.rx
        rx.datagrams += 1
        try:
            peer = self.peers.by_key.get(source)
            if peer is None:
                raise Drop("not_peer")
            frame = self.opener.open(datagram, peer.window)
            if len(frame) < MIN_FRAME:
                raise Drop("frame")
        except Drop as drop:
            rx.drops[drop.reason] += 1
            raise
        self.fdb.learn(frame[SRC].tobytes(), source, self.clock())
        return frame

    def delivered(self, nbytes: int) -> None:
        self.rx.frames += 1
        self.rx.bytes += nbytes

    def tap_write_failed(self) -> None:
        self.rx.drops["tap_write"] += 1

    def send_failed(self, reason: str) -> None:
        self.tx.drops[reason] += 1

    def sent(self, count: int) -> None:
        self.tx.datagrams += count

    # ------------------------------------------------------------------ membership
    def add_peer(self, peer: Peer) -> bool:
        return self.peers.add(peer)

    def remove_peer(self, name_or_key: str | PeerKey) -> Peer | None:
        peer = self.peers.remove(name_or_key)
        if peer is not None:
            self.fdb.forget_peer(peer.key)
        return peer

    def replace_config_peers(self, peers: list[Peer]) -> tuple[list[str], list[str]]:
        """Makes the peers from the config file exactly ``peers``, keeping runtime-added ones
        (unless the file now names the same address). Returns (added, removed) names."""
        wanted = {p.key: p for p in peers}
        removed: list[str] = []
        for old in self.peers.list():
            keep = wanted.get(old.key)
            if old.origin == "config" and (keep is None or keep.name != old.name):
                self.remove_peer(old.key)
                removed.append(old.name)
        added: list[str] = []
        for peer in peers:
            current = self.peers.find(peer.key)
            if current is not None and current.name == peer.name:
                current.origin = "config"
                continue
            if current is not None:
                self.remove_peer(current.key)
                removed.append(current.name)
            clash = self.peers.find(peer.name)
            if clash is not None:
                self.remove_peer(clash.key)
                removed.append(clash.name)
            self.add_peer(peer)
            added.append(peer.name)
        return added, removed

    def set_ageing(self, seconds: float) -> None:
        self.fdb.ageing = seconds

    # ------------------------------------------------------------------ views
    def stats(self) -> dict:
        return snapshot(self.tx, self.rx, len(self.fdb), len(self.peers))

    def fdb_entries(self) -> list[dict]:
        by_key = self.peers.by_key
        out = []
        for entry in self.fdb.entries(self.clock()):
            peer = by_key.get(entry.peer)
            out.append({"mac": entry.mac, "peer": peer.name if peer else f"{entry.peer[0]}:{entry.peer[1]}",
                        "age": entry.age})
        return out
