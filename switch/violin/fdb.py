"""The MAC learning table (forwarding database) with ageing.

Maps a MAC address learnt from a peer's frame to that peer's key (its UDP address). Plain
object, no I/O, no clock of its own: callers pass ``now`` (seconds, monotonic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterator

from .frames import format_mac


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    peer: Hashable
    age: float


class Fdb:
    """MAC -> peer, entries expire ``ageing`` seconds after the last frame from that MAC."""

    def __init__(self, ageing: float = 300.0, max_entries: int = 8192) -> None:
        if ageing <= 0:
            raise ValueError("ageing must be positive")
        self.ageing = ageing
        self.max_entries = max_entries
        self._table: dict[bytes, list] = {}
        self.full_misses = 0  # learns refused because the table was full of live entries

    def __len__(self) -> int:
        return len(self._table)

    def learn(self, mac: bytes, peer: Hashable, now: float) -> None:
        entry = self._table.get(mac)
        if entry is not None:
            entry[0] = peer
            entry[1] = now
            return
        if len(self._table) >= self.max_entries and not self.expire(now):
            self.full_misses += 1
            return
        self._table[mac] = [peer, now]

    def lookup(self, mac: bytes, now: float) -> Hashable | None:
        entry = self._table.get(mac)
        if entry is None:
            return None
        if now - entry[1] > self.ageing:
            self._table.pop(mac, None)
            return None
        return entry[0]

    def forget_peer(self, peer: Hashable) -> int:
        """Drop every entry pointing at ``peer`` (it left); returns how many."""
        gone = [mac for mac, entry in list(self._table.items()) if entry[0] == peer]
        for mac in gone:
            self._table.pop(mac, None)
        return len(gone)

    def expire(self, now: float) -> int:
        old = [mac for mac, entry in list(self._table.items()) if now - entry[1] > self.ageing]
        for mac in old:
            self._table.pop(mac, None)
        return len(old)

    def entries(self, now: float) -> Iterator[FdbEntry]:
        for mac, (peer, seen) in list(self._table.items()):
            if now - seen <= self.ageing:
                yield FdbEntry(format_mac(mac), peer, round(now - seen, 3))
