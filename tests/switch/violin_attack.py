"""Hostile datagrams for a switch daemon, and the tools to aim them (tests and bench_switch_attack).

The attacker sits on the physical LAN in a namespace of its own. It sends through a raw IPv4
socket, so it can claim any source address: most datagrams claim to come from the daemon's real
peer (its address and port), which is what an attacker on the LAN can do, and which carries them
past the cheap source check to the header, replay and tag checks. Datagrams larger than the link
are split into IP fragments here, as the kernel would do.

Every frame the attacker seals carries the ethertype ``MARK`` and the bytes ``ATTACK_MARKER``,
so one sniffer on the target's TAP tells whether any of it was delivered. Replays are real
datagrams captured on the target (a raw socket gets them reassembled) while its peer carried
frames of the same marker ethertype (``inject``).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field

from violin.codec import HEADER, HEADER_LEN, MAX_DATAGRAM, TAG_LEN, Sealer
from violin.frames import build_frame

from violin_netlab import read_pcap

MARK = 0x88B5  # IEEE local experimental ethertype
ATTACK_MARKER = b"VIOLIN-ATTACK-FRAME"
CLONE_NEWNET = 0x40000000
OVERHEAD = HEADER_LEN + TAG_LEN
FRAG_PAYLOAD = 1480  # IP payload per fragment on a 1500-byte link (a multiple of 8)

#: What each kind of hostile datagram is, and the drop counter it must end in.
KINDS = {
    "forged": "valid header from the peer, counter ahead, random ciphertext and tag",
    "wrong_key": "sealed with another secret under the right network id",
    "tampered": "sealed with the network's key, then one bit of the ciphertext or tag flipped",
    "cut": "sealed with the network's key, then cut short (still longer than the header + tag)",
    "oversized": "the largest UDP datagram (65,507 bytes), valid header, forged tag",
    "truncated": "every length from 0 to header + tag - 1",
    "version": "unknown version or kind byte, otherwise a sealed frame",
    "wrong_network": "a valid tag under another network id (same or other secret)",
    "own_sender": "sealed with the network's key under the target's own sender id",
    "replay": "real datagrams of the peer, captured on the target, sent again",
    "not_peer": "sealed with the network's key, from the attacker's own address",
    "random": "random bytes of random length (none a version-1 frame header)",
}
REASON = {"forged": "auth", "wrong_key": "auth", "tampered": "auth", "cut": "auth",
          "oversized": "auth", "truncated": "short", "version": "version",
          "wrong_network": "network", "own_sender": "own_sender", "replay": "replay",
          "not_peer": "not_peer"}
#: Share of each kind in a mix (oversized is a fixed small count, see ``build``).
SHARES = {"forged": 0.20, "wrong_key": 0.08, "tampered": 0.05, "cut": 0.05, "truncated": 0.05,
          "version": 0.03, "wrong_network": 0.12, "own_sender": 0.03, "replay": 0.20,
          "not_peer": 0.05, "random": 0.14}


def sender_id(listen: str, port: int) -> int:
    """A daemon's default sender id (violin.config.Config.effective_sender_id)."""
    digest = hashlib.sha256(f"{listen}:{port}".encode()).digest()
    return int.from_bytes(digest[:4], "big") or 1


def socket_in(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket made in the named network namespace (a socket keeps the namespace it was made
    in); the calling thread goes back to its own namespace at once."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}: {os.strerror(ctypes.get_errno())}")
        try:
            return socket.socket(family, kind, proto)
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back: " + os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)
        os.close(own)


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_packets(src: tuple[str, int], dst: tuple[str, int], payload: bytes,
               ident: int) -> list[bytes]:
    """The IPv4 packets (fragments when needed) of one UDP datagram from ``src`` to ``dst``.
    The UDP checksum is 0 (none), which IPv4 allows."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    saddr, daddr = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    out = []
    for offset in range(0, len(udp), FRAG_PAYLOAD):
        chunk = udp[offset:offset + FRAG_PAYLOAD]
        flags = (0x2000 if offset + FRAG_PAYLOAD < len(udp) else 0) | (offset // 8)
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident, flags, 64, 17, 0,
                             saddr, daddr)
        header = header[:10] + struct.pack("!H", _ip_checksum(header)) + header[12:]
        out.append(header + chunk)
    return out


def attack_frame(rng: random.Random, size: int | None = None) -> bytes:
    """An Ethernet frame (with its vnet header) that only the attacker ever makes."""
    size = rng.randrange(60, 1400) if size is None else size
    body = ATTACK_MARKER * (size // len(ATTACK_MARKER) + 1)
    return build_frame(b"\xff" * 6, b"\x02\xa7\x7a\xcc\x00\x01", MARK, body[:size])


@dataclass
class Mix:
    """Hostile datagrams, each with the source it claims, ready to send as raw IP packets."""

    datagrams: list[tuple[str, tuple[str, int], bytes]] = field(default_factory=list)
    groups: list[list[bytes]] = field(default_factory=list)  # each datagram's raw IP packets
    kinds: Counter = field(default_factory=Counter)

    @property
    def packets(self) -> list[bytes]:
        return [packet for group in self.groups for packet in group]

    def expected_drops(self) -> Counter:
        """Drop counter -> how many datagrams of the mix must end in it."""
        out: Counter = Counter()
        for kind, _, data in self.datagrams:
            if kind == "random":
                out["short" if len(data) < OVERHEAD else "version"] += 1
            else:
                out[REASON[kind]] += 1
        return out


def build(count: int, *, network_id: int, secret: bytes, peer: tuple[str, int],
          target: tuple[str, int], attacker: tuple[str, int], own_sender: int, peer_sender: int,
          captured: list[bytes], seed: int = 20) -> Mix:
    """``count`` hostile datagrams for the daemon at ``target`` whose one peer is ``peer``, in
    random order. ``captured`` are real datagrams of the peer to replay."""
    rng = random.Random(seed)
    counter = 1 << 62  # far ahead of any real counter (those start at the clock in ns)
    real = Sealer(network_id, peer_sender, secret, counter_start=counter)
    other_key = Sealer(network_id, peer_sender, rng.randbytes(32), counter_start=counter)
    other_net = [Sealer(network_id + 1, peer_sender, secret, counter_start=counter),
                 Sealer(network_id ^ 0x5A5A, peer_sender, rng.randbytes(32), counter_start=counter)]
    own = Sealer(network_id, own_sender, secret, counter_start=counter)
    small = [d for d in captured if len(d) <= FRAG_PAYLOAD - 8]
    large = [d for d in captured if len(d) > FRAG_PAYLOAD - 8]
    if not small:
        raise ValueError("no real datagrams of the peer were captured to replay")
    forged_counter = counter + 10**9

    def forged() -> bytes:
        nonlocal forged_counter
        forged_counter += 1
        n = rng.randrange(24, 1400)
        return (HEADER.pack(1, 1, 0, network_id, peer_sender, forged_counter)
                + rng.randbytes(n + TAG_LEN))

    def tampered() -> bytes:
        d = bytearray(real.seal(attack_frame(rng)))
        bit = rng.randrange(HEADER_LEN * 8, len(d) * 8)
        d[bit // 8] ^= 1 << (bit % 8)
        return bytes(d)

    def cut() -> bytes:
        d = bytes(real.seal(attack_frame(rng)))
        return d[:rng.randrange(OVERHEAD, len(d))]

    def version() -> bytes:
        d = bytearray(real.seal(attack_frame(rng)))
        if rng.random() < 0.5:
            d[0] = rng.choice([0, 2, 3, 0xFF])
        else:
            d[1] = rng.choice([0, 2, 0x7F, 0xFF])
        return bytes(d)

    def rand() -> bytes:
        while True:
            d = rng.randbytes(rng.randrange(0, 1472))
            if len(d) < 2 or d[:2] != b"\x01\x01":
                return d

    def replay() -> bytes:
        # large captured datagrams are replayed too, but rarely: each is ~45 fragments
        if large and rng.random() < 0.01:
            return rng.choice(large)
        return rng.choice(small)

    truncated_len = iter(range(10**9))
    makers = {
        "forged": forged,
        "wrong_key": lambda: bytes(other_key.seal(attack_frame(rng))),
        "tampered": tampered,
        "cut": cut,
        "truncated": lambda: rng.randbytes(next(truncated_len) % OVERHEAD),  # 0, 1, ... 35, 0, ...
        "version": version,
        "wrong_network": lambda: bytes(rng.choice(other_net).seal(attack_frame(rng))),
        "own_sender": lambda: bytes(own.seal(attack_frame(rng))),
        "replay": replay,
        "not_peer": lambda: bytes(real.seal(attack_frame(rng))),
        "random": rand,
    }
    oversized = max(20, count // 500)
    plan = ["oversized"] * oversized
    rest = count - oversized
    for kind, share in SHARES.items():
        plan += [kind] * int(rest * share)
    plan += ["forged"] * (count - len(plan))
    rng.shuffle(plan)
    mix = Mix()
    ident = 1
    for kind in plan:
        if kind == "oversized":
            forged_counter += 1
            data = HEADER.pack(1, 1, 0, network_id, peer_sender, forged_counter) + \
                rng.randbytes(MAX_DATAGRAM - HEADER_LEN)
        else:
            data = makers[kind]()
        src = attacker if kind == "not_peer" else peer
        mix.datagrams.append((kind, src, data))
        mix.kinds[kind] += 1
        mix.groups.append(ip_packets(src, target, data, ident))
        ident = ident % 0xFFFF + 1
    return mix


class Spoofer:
    """A raw IPv4 socket in the attacker's namespace that sends packets made by ``ip_packets``."""

    def __init__(self, netns: str, target_ip: str) -> None:
        self.sock = socket_in(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.dst = (target_ip, 0)
        self.errors: Counter = Counter()

    def send(self, packets: list[bytes]) -> int:
        """Sends every packet as fast as the socket takes them (one that finds the device's
        queue full is tried again); returns how many were sent."""
        sendto, dst, sent = self.sock.sendto, self.dst, 0
        for packet in packets:
            for _ in range(1000):
                try:
                    sendto(packet, dst)
                    sent += 1
                    break
                except OSError as err:
                    self.errors[err.errno] += 1
                    if err.errno not in (errno.ENOBUFS, errno.EAGAIN):
                        break
                    time.sleep(0)
        return sent

    def close(self) -> None:
        self.sock.close()


class Catcher:
    """Copies of the UDP datagrams that reach a namespace from ``peer`` (a raw IPPROTO_UDP socket
    gets them after IP reassembly), kept until ``stop``."""

    def __init__(self, netns: str, peer: tuple[str, int], port: int) -> None:
        self.sock = socket_in(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setblocking(False)
        self.peer = (socket.inet_aton(peer[0]), peer[1])
        self.port = port
        self.datagrams: list[bytes] = []

    def drain(self) -> None:
        while True:
            try:
                packet = self.sock.recv(70000)
            except BlockingIOError:
                return
            ihl = (packet[0] & 15) * 4
            if packet[12:16] != self.peer[0]:
                continue
            sport, dport = struct.unpack_from("!HH", packet, ihl)
            if sport == self.peer[1] and dport == self.port:
                self.datagrams.append(packet[ihl + 8:])

    def stop(self) -> list[bytes]:
        self.drain()
        self.sock.close()
        return self.datagrams


REPLAYED = b"VIOLIN-REPLAYED!"  # frames of the peer whose datagrams are captured and replayed
GENUINE = b"VIOLIN-GENUINE!!"   # frames of the peer sent after the attack: the sniffer's control


def inject(nsx, netns: str, dev: str, count: int, text: bytes = REPLAYED) -> None:
    """Sends ``count`` broadcast frames of the ethertype MARK carrying ``text`` out of ``dev``
    (into its daemon)."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((sys.argv[1], 0))\n"
        "src=open('/sys/class/net/%s/address' % sys.argv[1]).read().strip()\n"
        "f=b'\\xff'*6+bytes.fromhex(src.replace(':',''))+b'\\x88\\xb5'+sys.argv[3].encode()*8\n"
        "for _ in range(int(sys.argv[2])): s.send(f)\n")
    nsx(netns, "python3", "-c", code, dev, str(count), text.decode())


def udp_snmp(nsx, netns: str) -> dict[str, int]:
    """The Udp and Ip lines of /proc/net/snmp in a namespace, as {"Udp.RcvbufErrors": n, ...}."""
    lines = nsx(netns, "cat", "/proc/net/snmp").stdout.splitlines()
    out: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2]):
        proto, names = names.split(":", 1)
        for name, value in zip(names.split(), values.split(":", 1)[1].split()):
            out[f"{proto}.{name}"] = int(value)
    return out


# A TCP stream of a known pattern, both ends checking it: the client sends until the file named
# by argv[3] exists, then prints bytes sent and their SHA-256; the server prints what it got.
STREAM_SERVER = r"""
import hashlib, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
s.settimeout(60); c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
buf = bytearray(1 << 20); view = memoryview(buf); first = last = None
while True:
    k = c.recv_into(buf)
    if not k: break
    if first is None: first = time.monotonic()
    last = time.monotonic(); h.update(view[:k]); n += k
c.close(); print(n, h.hexdigest(), (last - first) if first else 0.0, flush=True)
"""

STREAM_CLIENT = r"""
import hashlib, os, socket, sys
chunk = bytes(range(256)) * 1024
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
h = hashlib.sha256(); n = 0; i = 0
while True:
    if i % 16 == 0 and os.path.exists(sys.argv[3]): break
    c.sendall(chunk); h.update(chunk); n += len(chunk); i += 1
c.shutdown(socket.SHUT_WR); c.recv(1); c.close(); print(n, h.hexdigest(), flush=True)
"""


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Sniffer:
    """tcpdump on one device of a namespace with a capture filter, into a pcap file."""

    def __init__(self, netns: str, dev: str, path, bpf: str) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "tcpdump", "-i", dev, "--immediate-mode", "-U", "-n",
             "-s", "256", "-w", str(path), bpf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump writes the pcap header once it captures
        wait_for(lambda: path.exists() and path.stat().st_size >= 24, 10)
        time.sleep(0.2)

    def stop(self) -> list[bytes]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return read_pcap(self.path) if self.path.exists() else []


def device_drops(nsx, namespaces: list[str]) -> int:
    """rx_dropped + tx_dropped of every device in the namespaces (full queues on the way)."""
    script = ("import glob\n"
              "paths = glob.glob('/sys/class/net/*/statistics/*x_dropped')\n"
              "print(sum(int(open(p).read()) for p in paths))")
    return sum(int(nsx(ns, "python3", "-c", script).stdout) for ns in namespaces)
