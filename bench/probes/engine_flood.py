#!/usr/bin/env python3
"""The C data path (violin._datapath) under a flood, on loopback, no root needed.

An engine serves a UDP socket and a "TAP" (one end of a SOCK_SEQPACKET socketpair, as in
tests/switch/test_datapath.py). ``--senders`` processes flood its socket for ``--seconds`` with
forged datagrams from addresses it has as peers (valid header, counter ahead, bad tag: each
costs it a replay-window check and an AEAD open; ``--kind network``: another network id, dropped
before either), while this process keeps up to 8 frames in
flight from the TAP to a peer socket that counts them (like a TCP receiver's ACKs going out).

    .venv/bin/python bench/probes/engine_flood.py
    .venv/bin/python bench/probes/engine_flood.py --so /tmp/old/_datapath.abi3.so   # another build

Prints the datagrams sent, how many the engine read (the rest the kernel dropped from its full
socket queue), the engine thread's CPU per datagram read, and the TAP frames it carried out per
second during the flood. docs/performance.md, "Under attack".
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import multiprocessing
import os
import random
import socket
import sys
import threading
import time


def load(so: str | None):
    if so:  # another build of the extension, in place of the installed one
        import violin

        loader = importlib.machinery.ExtensionFileLoader("violin._datapath", so)
        spec = importlib.util.spec_from_file_location("violin._datapath", so, loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        sys.modules["violin._datapath"] = module
        violin._datapath = module


def flooder(target: int, own_port: int, seconds: float, network: int, start, done) -> None:
    from violin.codec import HEADER

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", own_port))
    rng = random.Random(own_port)
    pool = [HEADER.pack(1, 1, 0, network, 5, (1 << 62) + i) + rng.randbytes(rng.randrange(60, 1400))
            for i in range(1000)]
    start.wait()
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for d in pool[:200]:
            s.sendto(d, ("127.0.0.1", target))
        sent += 200
    done.put(sent)


def thread_cpu(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--kind", choices=("forged", "network"), default="forged")
    ap.add_argument("--so", help="path of another build of violin/_datapath.abi3.so")
    args = ap.parse_args()
    load(args.so)
    from violin.core import Settings
    from violin.frames import build_frame
    from violin.native import NativeSwitch
    from violin.peers import Peer

    tap, engine_tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    engine_tap.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    base = 41000 + os.getpid() % 1000
    peers = [Peer("sink", "127.0.0.1", sink.getsockname()[1])]
    peers += [Peer(f"flood{k}", "127.0.0.1", base + k) for k in range(args.senders)]
    switch = NativeSwitch(Settings(9, 1, bytes(range(32)), "aes-256-gcm", 60.0, 64), peers)
    os.set_blocking(engine_tap.fileno(), False)
    engine = switch.attach(engine_tap.fileno(), sock.fileno())
    tids: list[int] = []

    def serve() -> None:
        tids.append(threading.get_native_id())
        engine.run()

    threading.Thread(target=serve, daemon=True).start()
    time.sleep(0.2)
    network = 9 if args.kind == "forged" else 10
    start, done = multiprocessing.Event(), multiprocessing.Queue()
    procs = [multiprocessing.Process(target=flooder, args=(sock.getsockname()[1], base + k,
                                                           args.seconds, network, start, done))
             for k in range(args.senders)]
    for p in procs:
        p.start()
    out = [0]

    def count() -> None:
        sink.settimeout(0.5)
        try:
            while True:
                sink.recv(70000)
                out[0] += 1
        except TimeoutError:
            pass

    counter = threading.Thread(target=count)
    counter.start()
    frame = build_frame(b"\x02\0\0\0\0\x99", b"\x02\0\0\0\0\x01", 0x88B5, b"x" * 100)
    tap.setblocking(False)
    cpu0 = thread_cpu(tids[0])
    start.set()
    sent, end = 0, time.monotonic() + args.seconds
    while time.monotonic() < end:
        if sent - out[0] < 8:
            try:
                tap.send(frame)
                sent += 1
            except BlockingIOError:
                pass
        else:
            time.sleep(0)
    carried = out[0]
    flood = sum(done.get() for _ in procs)
    for p in procs:
        p.join()
    counter.join()
    time.sleep(0.3)
    read = switch.stats()["rx_datagrams"]
    cpu = thread_cpu(tids[0]) - cpu0
    engine.stop()
    print(f"{args.kind} flood: {flood} datagrams sent by {args.senders} process(es) in "
          f"{args.seconds:g} s; "
          f"engine read {read} ({100 * read / max(flood, 1):.0f} %), "
          f"{1e6 * cpu / max(read, 1):.2f} us of its thread per datagram read; "
          f"TAP frames carried out during the flood: {carried / args.seconds:.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
