"""The datagram codec: a versioned header, then the sealed frame.

Wire format (network byte order), 20 bytes of header then the payload and a 16-byte tag::

    0      1      2      4            8            12                     20
    +------+------+------+------------+------------+----------------------+----------------+-----+
    | ver  | kind | rsvd | network id | sender id  | counter (u64)        | sealed payload | tag |
    +------+------+------+------------+------------+----------------------+----------------+-----+

The whole header is the AEAD's associated data, so none of it can be altered; bytes 8..20
(sender id + counter) are the 96-bit nonce. The network key is derived with HKDF-SHA256 from the
configured secret and the network id, so one secret reused for two networks still gives two keys.
Counters start at the sender's clock in nanoseconds and count up by one per datagram, so a
restarted daemon never reuses a nonce and its peers' replay windows accept it at once.
The receiver keeps a sliding replay window (IPsec/WireGuard style) per peer.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
KIND_FRAME = 1
HEADER = struct.Struct("!BBHIIQ")
HEADER_LEN = HEADER.size  # 20
NONCE = slice(8, 20)
TAG_LEN = 16
MAX_DATAGRAM = 65507  # largest UDP payload over IPv4
MAX_PAYLOAD = MAX_DATAGRAM - HEADER_LEN - TAG_LEN
CIPHERS = ("aes-256-gcm", "chacha20-poly1305", "none")


class Drop(Exception):
    """A received datagram is refused; ``reason`` is the counter it is charged to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    version: int
    kind: int
    network_id: int
    sender_id: int
    counter: int

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "Header":
        version, kind, _rsvd, network_id, sender_id, counter = HEADER.unpack_from(data, 0)
        return cls(version, kind, network_id, sender_id, counter)


def derive_key(secret: bytes, network_id: int) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"violin-switch v1",
        info=b"network %d" % network_id,
    ).derive(secret)


def make_aead(cipher: str, secret: bytes, network_id: int):
    if cipher == "none":
        return None
    key = derive_key(secret, network_id)
    if cipher == "aes-256-gcm":
        return AESGCM(key)
    if cipher == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown cipher {cipher!r}; use one of {', '.join(CIPHERS)}")


class ReplayWindow:
    """Sliding window over a sender's counters: each counter is accepted once, and only if it is
    newer than ``size`` counters behind the highest one seen. ``check`` before authenticating,
    ``commit`` only after, so forged datagrams cannot move the window."""

    __slots__ = ("size", "top", "bits", "mask")

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.top = 0
        self.bits = 1  # counter 0 is never valid
        self.mask = (1 << size) - 1

    def check(self, counter: int) -> bool:
        if counter > self.top:
            return True
        offset = self.top - counter
        return offset < self.size and not (self.bits >> offset) & 1

    def commit(self, counter: int) -> None:
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & self.mask if shift < self.size else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)


class Sealer:
    """Seals frames of one sender. One instance per sending thread (it owns its output buffer)."""

    def __init__(self, network_id: int, sender_id: int, secret: bytes, cipher: str = "aes-256-gcm",
                 counter_start: int | None = None) -> None:
        self.network_id = network_id
        self.sender_id = sender_id
        self.aead = make_aead(cipher, secret, network_id)
        self.counter = time.time_ns() if counter_start is None else counter_start
        self.overhead = HEADER_LEN + (TAG_LEN if self.aead is not None else 0)
        self.buf = bytearray(MAX_DATAGRAM + 64)
        self.view = memoryview(self.buf)

    def seal(self, payload: bytes | memoryview) -> memoryview:
        """Returns a view of the datagram (valid until the next call)."""
        n = len(payload)
        if n > MAX_PAYLOAD:
            raise Drop("too_big")
        self.counter += 1
        view = self.view
        HEADER.pack_into(self.buf, 0, VERSION, KIND_FRAME, 0, self.network_id, self.sender_id,
                         self.counter)
        if self.aead is None:
            view[HEADER_LEN:HEADER_LEN + n] = payload
            return view[:HEADER_LEN + n]
        end = HEADER_LEN + n + TAG_LEN
        self.aead.encrypt_into(view[NONCE], payload, view[:HEADER_LEN], view[HEADER_LEN:end])
        return view[:end]


class Opener:
    """Checks and opens datagrams of one network. One instance per receiving thread."""

    def __init__(self, network_id: int, secret: bytes, cipher: str = "aes-256-gcm",
                 own_sender_id: int | None = None) -> None:
        self.network_id = network_id
        self.aead = make_aead(cipher, secret, network_id)
        self.overhead = HEADER_LEN + (TAG_LEN if self.aead is not None else 0)
        self.own_sender_id = own_sender_id
        self.buf = bytearray(MAX_DATAGRAM + 64)
        self.view = memoryview(self.buf)

    def open(self, datagram: memoryview, window: ReplayWindow) -> memoryview:
        """Returns a view of the payload (valid until the next call) or raises Drop(reason)."""
        n = len(datagram)
        if n < self.overhead:
            raise Drop("short")
        version, kind, _rsvd, network_id, sender_id, counter = HEADER.unpack_from(datagram, 0)
        if version != VERSION or kind != KIND_FRAME:
            raise Drop("version")
        if network_id != self.network_id:
            raise Drop("network")
        if sender_id == self.own_sender_id:
            raise Drop("own_sender")
        if not window.check(counter):
            raise Drop("replay")
        if self.aead is None:
            window.commit(counter)
            return datagram[HEADER_LEN:]
        plain = n - HEADER_LEN - TAG_LEN
        out = self.view[:plain]
        try:
            self.aead.decrypt_into(datagram[NONCE], datagram[HEADER_LEN:], datagram[:HEADER_LEN], out)
        except InvalidTag:
            raise Drop("auth") from None
        window.commit(counter)
        return out
