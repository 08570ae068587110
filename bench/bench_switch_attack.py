#!/usr/bin/env python3
"""Benchmark: real traffic through the VIOLIN switch daemon with and without an attack.

The setup of tests/switch/test_attack.py: three hosts in network namespaces on one bridge (the
physical LAN), a daemon with a real TAP on hosts 1 and 2 (C data path, AES-256-GCM, run as an
unprivileged uid), host 3 the attacker. Real traffic is one TCP stream from host 1 to host 2
through the TAPs for ``--time`` seconds; its throughput is what the receiver counted over the
time it received. Under attack, host 3 sends hostile datagrams at host 2's daemon the whole
time, as fast as one Python process can push them through a raw socket: a pool of ``--pool``
datagrams (tests/switch/violin_attack.py: forged, tampered, replayed, truncated, oversized,
wrong-network, own sender id, not from a peer, random), most claiming the peer's address, sent
again and again. Baseline and attack rounds alternate (``--rounds`` of each).

Printed: baseline and under-attack throughput, their ratio, datagrams per second the attacker
sent, the target's drops by reason, the kernel's drops before the daemon, daemons' CPU, and
crashes (a daemon gone or restarted). Needs root; everything it makes is removed at the end.

usage: bench_switch_attack.py [--time 8] [--rounds 2] [--pool 100000] [--closed-port]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "switch"))

from violin_attack import (MARK, STREAM_CLIENT, STREAM_SERVER, Catcher, Sniffer,  # noqa: E402
                           Spoofer, build, device_drops, inject, sender_id, udp_snmp)
from violin_netlab import Domain, Lab, nsx, tcp_transfer  # noqa: E402

from bench_switch import cpu_seconds  # noqa: E402  (bench/ is the script's own directory)

ATK = Domain("atk", 2031, "10.201.31", 5331, "vswatk")
PEER, TARGET, ATTACKER = 1, 2, 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Run:
    def __init__(self, lab: Lab, groups: list[list[bytes]]) -> None:
        self.lab = lab
        self.groups = groups
        self.pids = [lab.procs[(ATK.name, h)].pid for h in (PEER, TARGET)]
        self.spoofer = Spoofer(lab.ns(ATTACKER), lab.phys_ip(TARGET))
        self.port = 7400
        # the same packets to UDP port 9 (the first fragment of each datagram has the header)
        self.closed = [[g[0][:22] + b"\x00\x09" + g[0][24:], *g[1:]] for g in groups]

    def stream(self, seconds: float, attack: str) -> dict:
        """A TCP stream of ``seconds``; ``attack``: "" (none), "daemon" (at the daemon's port) or
        "closed" (the same packets at a port nothing listens on: what the attack costs the
        machine without the daemon's part)."""
        lab = self.lab
        self.port += 1
        stop = lab.dir / f"stop-{self.port}"
        server = subprocess.Popen(["ip", "netns", "exec", lab.ns(TARGET), sys.executable, "-c",
                                   STREAM_SERVER, ATK.ip(TARGET), str(self.port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = None
        try:
            assert server.stdout.readline().strip() == "ready"
            before = lab.stats(TARGET, ATK)
            snmp = udp_snmp(nsx, lab.ns(TARGET))
            devs = device_drops(nsx, lab.namespaces)
            cpu0, own0, t0 = cpu_seconds(self.pids), own_cpu(), time.monotonic()
            client = subprocess.Popen(["ip", "netns", "exec", lab.ns(PEER), sys.executable, "-c",
                                       STREAM_CLIENT, ATK.ip(TARGET), str(self.port), str(stop)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            datagrams = packets = 0
            if attack:
                sendto, dst = self.spoofer.sock.sendto, self.spoofer.dst
                groups = self.groups if attack == "daemon" else self.closed
                deadline = t0 + seconds
                while time.monotonic() < deadline:
                    i = datagrams % len(groups)
                    for group in groups[i:i + 2000]:
                        for packet in group:
                            try:
                                sendto(packet, dst)
                                packets += 1
                            except OSError as err:
                                self.spoofer.errors[err.errno] += 1
                        datagrams += 1
            else:
                time.sleep(seconds)
            attack_time = time.monotonic() - t0
            stop.touch()
            client_out, client_err = client.communicate(timeout=60)
            server_out, server_err = server.communicate(timeout=60)
            cpu = cpu_seconds(self.pids) - cpu0
            own = own_cpu() - own0
        finally:
            stop.touch()
            for proc in (client, server):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
        time.sleep(1)  # let the daemon read what is still queued
        after = lab.stats(TARGET, ATK)
        snmp2 = udp_snmp(nsx, lab.ns(TARGET))
        got, want = server_out.split(), client_out.split()
        intact = client.returncode == 0 and server.returncode == 0 and got[:2] == want[:2]
        if not intact:
            log(f"stream not intact: client {client_out!r} {client_err[-300:]!r}, "
                f"server {server_out!r} {server_err[-300:]!r}")
        nbytes, secs = (int(got[0]), float(got[2])) if len(got) == 3 else (0, 1.0)
        drops = Counter({k: after["drops"][k] - before["drops"][k] for k in after["drops"]})
        return {
            "attack": attack, "mbps": nbytes * 8 / max(secs, 1e-9) / 1e6, "intact": intact,
            "datagrams": datagrams, "packets": packets, "rate": datagrams / attack_time,
            "drops": +drops,
            "kernel": (snmp2["Udp.RcvbufErrors"] - snmp["Udp.RcvbufErrors"]
                       + snmp2["Ip.ReasmFails"] - snmp["Ip.ReasmFails"]
                       + device_drops(nsx, lab.namespaces) - devs),
            "daemon_cpu": 100 * cpu / attack_time, "attacker_cpu": 100 * own / attack_time,
            "delivered": after["tap_tx_frames"] - before["tap_tx_frames"],
        }


def setup(pool: int) -> tuple[Lab, list[list[bytes]], dict]:
    lab = Lab(hosts=3)
    try:
        for h, other in ((PEER, TARGET), (TARGET, PEER)):
            lab.add_tap(h, ATK)
            lab.write_config(h, ATK, [other], log_level="warning")
            lab.start_daemon(h, ATK)
        for h in (PEER, TARGET):
            lab.wait_ready(h, ATK)
        if not lab.ping(PEER, ATK.ip(TARGET), count=3):
            raise RuntimeError("the two daemons do not carry a ping")
        port = ATK.port
        peer, target = (lab.phys_ip(PEER), port), (lab.phys_ip(TARGET), port)
        catcher = Catcher(lab.ns(TARGET), peer, port)
        try:
            inject(nsx, lab.ns(PEER), ATK.tap, 300)
            tcp_transfer(lab, PEER, TARGET, ATK.ip(TARGET), size=1 << 20, port=7399)
        finally:
            captured = catcher.stop()
        mix = build(pool, network_id=ATK.network_id, secret=bytes.fromhex(ATK.key), peer=peer,
                    target=target, attacker=(lab.phys_ip(ATTACKER), port),
                    own_sender=sender_id(*target), peer_sender=sender_id(*peer),
                    captured=captured)
    except BaseException:
        lab.close()
        raise
    return lab, mix.groups, dict(mix.kinds)


LABEL = {"": "baseline", "daemon": "under attack", "closed": "attack at a closed port"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", type=float, default=8, help="seconds per stream (default 8)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of baseline then attack (default 2)")
    ap.add_argument("--pool", type=int, default=100_000,
                    help="distinct hostile datagrams, sent in a loop (default 100,000)")
    ap.add_argument("--closed-port", action="store_true",
                    help="each round also sends the attack at a closed port of the target (what "
                         "the attack costs this machine without the daemon's part)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces, TAP devices, raw sockets)")
    log(f"kernel {os.uname().release}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; "
        f"building {args.pool} hostile datagrams")
    lab, groups, kinds = setup(args.pool)
    modes = ["", "daemon"] + (["closed"] if args.closed_port else [])
    rows: list[dict] = []
    crashes = 0
    marked: list[bytes] = []
    try:
        sniffer = Sniffer(lab.ns(TARGET), ATK.tap, lab.dir / "marker.pcap",
                          f"ether proto {MARK:#06x}")
        run = Run(lab, groups)
        pids = {h: lab.procs[(ATK.name, h)].pid for h in (PEER, TARGET)}
        log(f"pool: {sum(len(g) for g in groups)} packets; kinds {kinds}")
        for r in range(args.rounds):
            for mode in modes:
                row = run.stream(args.time, mode)
                row.update(round=r + 1, load1=os.getloadavg()[0])
                rows.append(row)
                log(f"round {r + 1} {LABEL[mode]}: {row['mbps']:.0f} Mb/s, intact {row['intact']}, "
                    f"attacker {row['rate']:.0f} datagrams/s, daemons {row['daemon_cpu']:.0f}% "
                    f"CPU, drops {dict(row['drops'])}, kernel drops {row['kernel']}")
        for (_, h), proc in lab.procs.items():
            if proc.poll() is not None or proc.pid != pids[h]:
                crashes += 1
        run.spoofer.close()
        marked = sniffer.stop()
    finally:
        lab.close()
    by = {mode: [r for r in rows if r["attack"] == mode] for mode in modes}
    mean = {mode: statistics.mean(r["mbps"] for r in rs) for mode, rs in by.items()}
    print("| round | traffic | TCP Mb/s | intact | attacker datagrams/s | daemons CPU % | "
          "attacker CPU % | load1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['round']} | {LABEL[r['attack']]} | {r['mbps']:.0f} | "
              f"{'yes' if r['intact'] else 'NO'} | {r['rate']:.0f} | {r['daemon_cpu']:.0f} | "
              f"{r['attacker_cpu']:.0f} | {r['load1']:.2f} |")
    print()
    print(f"baseline {mean['']:.0f} Mb/s, under attack {mean['daemon']:.0f} Mb/s, "
          f"ratio {mean['daemon'] / mean['']:.2f}")
    if "closed" in mean:
        print(f"attack at a closed port {mean['closed']:.0f} Mb/s, "
              f"ratio {mean['closed'] / mean['']:.2f}")
    hit = by["daemon"]
    drops: Counter = Counter()
    for r in hit:
        drops.update(r["drops"])
    print(f"attacker at the daemon: {sum(r['datagrams'] for r in hit)} datagrams in {len(hit)} x "
          f"{args.time:g} s, {statistics.mean(r['rate'] for r in hit):.0f} datagrams/s "
          f"({statistics.mean(r['packets'] for r in hit) / args.time:.0f} packets/s)")
    print(f"target's drops by reason: {dict(sorted(drops.items()))} (total {sum(drops.values())}); "
          f"dropped by the kernel before the daemon: {sum(r['kernel'] for r in hit)}")
    print(f"crashes: {crashes}; attacker frames delivered to the TAP: {len(marked)}")
    return 0 if crashes == 0 and not marked and all(r["intact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
