"""The datagram codec: sealing, opening, replay window, and refusal of bad datagrams."""

from __future__ import annotations

import os
import random

import pytest

from violin.codec import (HEADER, HEADER_LEN, MAX_PAYLOAD, TAG_LEN, Drop, Opener, ReplayWindow,
                          Sealer, derive_key)

SECRET = bytes(range(32))


def pair(cipher="aes-256-gcm", network_id=7, sender=11, start=1000):
    return Sealer(network_id, sender, SECRET, cipher, counter_start=start), Opener(network_id, SECRET, cipher)


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305", "none"])
def test_roundtrip(cipher):
    sealer, opener = pair(cipher)
    window = ReplayWindow()
    for size in (24, 1514, 60000):
        payload = os.urandom(size)
        datagram = bytes(sealer.seal(payload))
        assert len(datagram) == size + sealer.overhead
        assert bytes(opener.open(memoryview(datagram), window)) == payload


def test_ciphertext_hides_the_frame():
    sealer, _ = pair()
    payload = b"VIOLIN-MARKER" * 10
    assert b"VIOLIN-MARKER" not in bytes(sealer.seal(payload))


def test_header_fields_and_nonce_are_unique_per_datagram():
    sealer, _ = pair(start=5)
    first = bytes(sealer.seal(b"x" * 30))
    second = bytes(sealer.seal(b"x" * 30))
    v1, k1, _, net, sender, c1 = HEADER.unpack_from(first)
    c2 = HEADER.unpack_from(second)[5]
    assert (v1, k1, net, sender) == (1, 1, 7, 11)
    assert (c1, c2) == (6, 7)
    assert first[HEADER_LEN:] != second[HEADER_LEN:]


def test_replayed_datagram_is_dropped():
    sealer, opener = pair()
    window = ReplayWindow()
    datagram = bytes(sealer.seal(b"y" * 40))
    opener.open(memoryview(datagram), window)
    with pytest.raises(Drop) as drop:
        opener.open(memoryview(datagram), window)
    assert drop.value.reason == "replay"


def test_window_accepts_reordering_within_the_window_only():
    w = ReplayWindow(64)
    for c in (100, 98, 99, 37 + 64):
        assert w.check(c)
        w.commit(c)
    assert not w.check(100) and not w.check(98)
    assert w.check(97)                # late but inside the window, never seen
    assert not w.check(100 - 64)      # too old
    w.commit(10_000)                  # a restarted sender jumps far ahead
    assert not w.check(100) and w.check(10_001)


def test_forged_datagram_does_not_move_the_window():
    sealer, opener = pair()
    window = ReplayWindow()
    good = bytearray(sealer.seal(b"z" * 40))
    forged = bytearray(good)
    HEADER.pack_into(forged, 0, 1, 1, 0, 7, 11, 10**15)  # counter far ahead, tag now wrong
    with pytest.raises(Drop) as drop:
        opener.open(memoryview(bytes(forged)), window)
    assert drop.value.reason == "auth"
    assert window.top == 0
    opener.open(memoryview(bytes(good)), window)


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d[:HEADER_LEN + TAG_LEN - 1], "short"),
    (lambda d: b"\x02" + d[1:], "version"),
    (lambda d: d[:1] + b"\x09" + d[2:], "version"),
    (lambda d: d[:4] + (8).to_bytes(4, "big") + d[8:], "network"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "auth"),
    (lambda d: d[:HEADER_LEN] + bytes([d[HEADER_LEN] ^ 0x80]) + d[HEADER_LEN + 1:], "auth"),
    (lambda d: d[:8] + (12).to_bytes(4, "big") + d[12:], "auth"),  # sender id is authenticated
])
def test_bad_datagrams_are_dropped_with_their_reason(mutate, reason):
    sealer, opener = pair()
    datagram = bytes(sealer.seal(b"q" * 64))
    with pytest.raises(Drop) as drop:
        opener.open(memoryview(mutate(datagram)), ReplayWindow())
    assert drop.value.reason == reason


def test_wrong_key_fails_authentication():
    sealer = Sealer(7, 11, SECRET, counter_start=1)
    opener = Opener(7, bytes(32))
    with pytest.raises(Drop) as drop:
        opener.open(memoryview(bytes(sealer.seal(b"k" * 64))), ReplayWindow())
    assert drop.value.reason == "auth"


def test_own_datagrams_looped_back_are_dropped():
    sealer = Sealer(7, 11, SECRET, counter_start=1)
    opener = Opener(7, SECRET, own_sender_id=11)
    with pytest.raises(Drop) as drop:
        opener.open(memoryview(bytes(sealer.seal(b"o" * 64))), ReplayWindow())
    assert drop.value.reason == "own_sender"


def test_one_secret_gives_different_keys_per_network():
    assert derive_key(SECRET, 1) != derive_key(SECRET, 2)


def test_oversized_payload_is_refused():
    sealer, _ = pair()
    with pytest.raises(Drop) as drop:
        sealer.seal(b"\0" * (MAX_PAYLOAD + 1))
    assert drop.value.reason == "too_big"


def test_random_datagrams_never_raise_anything_but_drop():
    _, opener = pair()
    window = ReplayWindow()
    rng = random.Random(3)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(0, 200))
        if rng.random() < 0.5 and len(data) >= 8:  # make many look like ours
            data = b"\x01\x01\x00\x00" + (7).to_bytes(4, "big") + data[8:]
        with pytest.raises(Drop):
            opener.open(memoryview(data), window)
