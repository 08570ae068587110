"""The switch with its per-frame path in C (``violin._datapath``).

``NativeSwitch`` is a ``Switch`` whose peers, FDB and counters live in the C engine once the
daemon has opened its TAP and socket (``attach``). The Python object keeps what the control plane
needs: peer names and origins, config reloads, the views for the control socket and metrics. The
engine does, per frame, what ``Switch.from_tap`` and ``Switch.from_peer`` do, with the same wire
format, counters and drop reasons; the tests run both against each other.
"""

from __future__ import annotations

import time

from .codec import derive_key
from .core import Settings, Switch
from .frames import format_mac
from .peers import Peer, PeerKey

try:
    from . import _datapath
except ImportError as err:  # built without a C compiler, or libsodium23 missing
    _datapath = None
    IMPORT_ERROR: str | None = str(err)
else:
    IMPORT_ERROR = None


def available() -> bool:
    return _datapath is not None


class NativeSwitch(Switch):
    def __init__(self, settings: Settings, peers: list[Peer] | None = None) -> None:
        if _datapath is None:
            raise RuntimeError(f"the C data path is not built ({IMPORT_ERROR})")
        super().__init__(settings, peers)
        self.engine = None

    def attach(self, tap_fd: int, sock_fd: int):
        """Creates the engine on the daemon's TAP and UDP socket, with the current peers.
        The TAP must be non-blocking. Returns the engine (``run`` it in a thread)."""
        s = self.settings
        key = derive_key(s.secret, s.network_id) if s.cipher != "none" else b""
        engine = _datapath.Engine(tap_fd, sock_fd, s.network_id, s.sender_id, s.cipher, key,
                                  time.time_ns(), self.fdb.ageing, s.fdb_max_entries)
        for peer in self.peers.list():
            engine.add_peer(peer.address, peer.port)
        self.engine = engine
        return engine

    # membership: the Python table keeps names; the engine keeps addresses and replay windows
    def add_peer(self, peer: Peer) -> bool:
        added = super().add_peer(peer)
        if added and self.engine is not None:
            self.engine.add_peer(peer.address, peer.port)
        return added

    def remove_peer(self, name_or_key: str | PeerKey) -> Peer | None:
        peer = super().remove_peer(name_or_key)
        if peer is not None and self.engine is not None:
            self.engine.remove_peer(peer.address, peer.port)
        return peer

    def set_ageing(self, seconds: float) -> None:
        super().set_ageing(seconds)
        if self.engine is not None:
            self.engine.set_ageing(seconds)

    # views
    def stats(self) -> dict:
        if self.engine is None:
            return super().stats()
        stats = self.engine.stats()
        stats["peers"] = len(self.peers)
        return stats

    def fdb_entries(self) -> list[dict]:
        if self.engine is None:
            return super().fdb_entries()
        by_key = self.peers.by_key
        out = []
        for mac, address, port, age in sorted(self.engine.fdb()):
            peer = by_key.get((address, port))
            out.append({"mac": format_mac(mac), "peer": peer.name if peer else f"{address}:{port}",
                        "age": round(age, 3)})
        return out
