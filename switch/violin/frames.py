"""Ethernet frames as the TAP hands them over: a virtio-net header followed by the frame.

The TAP is opened with IFF_VNET_HDR, so every read starts with a 10-byte ``virtio_net_hdr``
(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset). With TSO offloads on, a read can
be a GSO "super-frame" of up to the TAP's ``gso_max_size``; the header travels with the frame
unchanged, so the receiving TAP (also opened with IFF_VNET_HDR) completes checksums and
segments where it has to.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VNET_HDR_LEN = 10
ETH_HDR_LEN = 14
MIN_FRAME = VNET_HDR_LEN + ETH_HDR_LEN
DST = slice(VNET_HDR_LEN, VNET_HDR_LEN + 6)
SRC = slice(VNET_HDR_LEN + 6, VNET_HDR_LEN + 12)
BROADCAST = b"\xff" * 6

VNET_HDR = struct.Struct("<BBHHHH")
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
GSO_NONE = 0


@dataclass(frozen=True)
class VnetHeader:
    """The decoded ``virtio_net_hdr`` (for diagnostics and tests; the data path never decodes it)."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return VNET_HDR.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "VnetHeader":
        return cls(*VNET_HDR.unpack_from(data, 0))


PLAIN = VnetHeader().pack()


def is_group(mac: bytes) -> bool:
    """True for broadcast and multicast destinations (the I/G bit)."""
    return bool(mac[0] & 1)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r} (expected six hex octets like 02:00:5e:00:00:01)")
    return bytes(int(p, 16) for p in parts)


def build_frame(dst: bytes, src: bytes, ethertype: int, payload: bytes, vnet: bytes = PLAIN) -> bytes:
    """A frame as the TAP would hand it over (vnet header + Ethernet); used by tests and tools."""
    return vnet + dst + src + struct.pack("!H", ethertype) + payload
