"""Counters of a daemon, kept per direction (TAP -> peers, peers -> TAP)."""

from __future__ import annotations

from collections import Counter

TX_DROPS = ("runt", "too_big", "send_error", "no_peers")
RX_DROPS = ("short", "version", "network", "not_peer", "own_sender", "replay", "auth", "frame",
            "tap_write")


class TxCounters:
    """TAP -> peers."""

    __slots__ = ("frames", "bytes", "unicast", "flooded", "datagrams", "drops")

    def __init__(self) -> None:
        self.frames = 0      # frames read from the TAP
        self.bytes = 0
        self.unicast = 0     # frames sent to the one peer behind the destination
        self.flooded = 0     # frames sent to every peer (broadcast, multicast, unknown unicast)
        self.datagrams = 0   # datagrams sent (a flooded frame counts once per peer)
        self.drops: Counter[str] = Counter()


class RxCounters:
    """Peers -> TAP."""

    __slots__ = ("datagrams", "frames", "bytes", "drops")

    def __init__(self) -> None:
        self.datagrams = 0   # datagrams received, good or bad
        self.frames = 0      # frames written to the TAP
        self.bytes = 0
        self.drops: Counter[str] = Counter()


def snapshot(tx: TxCounters, rx: RxCounters, fdb_entries: int, peers: int) -> dict:
    drops = {reason: 0 for reason in TX_DROPS + RX_DROPS}
    drops.update(tx.drops)
    drops.update(rx.drops)
    return {
        "tap_rx_frames": tx.frames,
        "tap_rx_bytes": tx.bytes,
        "tx_unicast_frames": tx.unicast,
        "tx_flooded_frames": tx.flooded,
        "tx_datagrams": tx.datagrams,
        "rx_datagrams": rx.datagrams,
        "tap_tx_frames": rx.frames,
        "tap_tx_bytes": rx.bytes,
        "drops": drops,
        "fdb_entries": fdb_entries,
        "peers": peers,
    }
