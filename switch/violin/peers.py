"""Peers of a daemon: the other daemons of the same virtual domain (full mesh)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .codec import ReplayWindow

PeerKey = tuple[str, int]


@dataclass
class Peer:
    name: str
    address: str
    port: int
    origin: str = "config"  # "config" (from the file) or "runtime" (added over the control socket)
    window: ReplayWindow = field(default_factory=ReplayWindow, repr=False, compare=False)

    @property
    def key(self) -> PeerKey:
        return (self.address, self.port)

    def describe(self) -> dict:
        return {"name": self.name, "address": self.address, "port": self.port, "origin": self.origin}


def check_peer(name: object, address: object, port: object) -> tuple[str, str, int]:
    """Validates a peer's fields; raises ValueError with a message saying what to fix."""
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ValueError(f"peer name must be a non-empty string of at most 64 characters, got {name!r}")
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        raise ValueError(f"peer {name}: address {address!r} is not an IP address") from None
    if ip.version != 4:
        raise ValueError(f"peer {name}: address {address} is IPv6; this version carries IPv4 only")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"peer {name}: port must be an integer 1-65535, got {port!r}")
    return name, str(ip), port


class PeerTable:
    """Peers by UDP address. Readers (the data thread) take ``snapshot``: a dict replaced whole on
    every change, so a lookup never sees a half-made table and needs no lock."""

    def __init__(self, peers: list[Peer] | None = None) -> None:
        self.by_key: dict[PeerKey, Peer] = {}
        self.keys: tuple[PeerKey, ...] = ()
        for peer in peers or []:
            self.add(peer)

    def _publish(self, table: dict[PeerKey, Peer]) -> None:
        self.by_key = table
        self.keys = tuple(table)

    def __len__(self) -> int:
        return len(self.by_key)

    def list(self) -> list[Peer]:
        return sorted(self.by_key.values(), key=lambda p: p.name)

    def find(self, name_or_key: str | PeerKey) -> Peer | None:
        table = self.by_key
        if isinstance(name_or_key, tuple):
            return table.get(name_or_key)
        for peer in table.values():
            if peer.name == name_or_key:
                return peer
        return None

    def add(self, peer: Peer) -> bool:
        """Adds ``peer``; False when the very same peer is already there. A name or an address
        already taken by a different peer is an error (remove that one first)."""
        old = self.by_key.get(peer.key)
        if old is not None:
            if old.name == peer.name:
                return False
            raise ValueError(f"address {peer.address}:{peer.port} already belongs to peer {old.name}; "
                             f"remove it first")
        same_name = self.find(peer.name)
        if same_name is not None:
            raise ValueError(f"peer name {peer.name} is already used for {same_name.address}:"
                             f"{same_name.port}; remove it first or choose another name")
        table = dict(self.by_key)
        table[peer.key] = peer
        self._publish(table)
        return True

    def remove(self, name_or_key: str | PeerKey) -> Peer | None:
        peer = self.find(name_or_key)
        if peer is None:
            return None
        table = dict(self.by_key)
        del table[peer.key]
        self._publish(table)
        return peer
