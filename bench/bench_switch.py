#!/usr/bin/env python3
"""Benchmark: the VIOLIN switch daemon against the best userspace peers, in one run.

Two network namespaces joined by a veth pair (the "physical" link), as in the project's anchor
harness; each overlay gets a TAP per namespace with 10.201.77.1/2 and is measured with iperf3
(TCP, 1 stream and 4 streams) and ping (200 x 10 ms: mean and median RTT). Variants:

  direct          the veth itself (the RTT every overlay adds to)
  violin          violin-switchd, AES-256-GCM, TAP MTU 1500, physical MTU 1500, TSO super-frames
  violin_py       the same with the per-frame path in Python (datapath: python)
  violin_nocrypt  the same with cipher none (what authentication costs)
  violin_gso8k    TAP gso_max_size 8000 (smaller super-frames: fewer IP fragments each)
  violin_nooffload  offload off: one 1500-byte frame per read (frame-rate bound, like the peers)
  violin_fit      offload off and TAP MTU 1412: every datagram fits the 1500 link, no IP fragments
  violin_64k      physical MTU 65000: super-frames travel unfragmented (the moonshot setting)
  tinc_none       tinc 1.0 switch mode, Cipher/Digest none
  vde_plug        vde_plug tap:// <-> udp://
  py_naive        the least a Python forwarder does: one epoll loop, read a frame, send it (no
                  header, no authentication): the floor for any Python data path
  py_aes          the same plus AES-256-GCM on every frame (nonce, tag): the floor for an
                  authenticated Python data path

Daemons run as an unprivileged uid on TAPs root made for it. Everything lives in a temp dir and
in namespaces named vsw-b*, all removed at the end (also on Ctrl-C).

usage: bench_switch.py [--time 10] [--runs 1] [--variants violin,tinc_none,...] [--quiet 40]
                       [--ping-interval 0.01] [--no-tcp]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from broker.lab.devnode import rerun_with_private_tun

REPO = Path(__file__).resolve().parent.parent
UID = 64201
NS_A, NS_B = "vsw-bA", "vsw-bB"
PHY_A, PHY_B = "10.201.0.1", "10.201.0.2"
VIRT_A, VIRT_B = "10.201.77.1", "10.201.77.2"
ALL = ["direct", "violin", "violin_py", "violin_nocrypt", "violin_gso8k", "violin_nooffload", "violin_fit", "violin_64k",
       "tinc_none", "vde_plug", "py_naive", "py_aes"]

# The reference Python forwarders (py_naive, py_aes): argv = TAP name, own address, peer address,
# port, "aes" or "none". One thread, one epoll set, one frame per ready descriptor.
PY_FORWARDER = r"""
import os, select, socket, sys
import pytun
tap, me, peer, port, cipher = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
dev = pytun.TunTapDevice(name=tap, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
fd = dev.fileno()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((me, port))
dst = (peer, port)
ep = select.epoll()
ep.register(fd, select.EPOLLIN)
ep.register(sock.fileno(), select.EPOLLIN)
if cipher == "none":
    while True:
        for f, _ in ep.poll():
            if f == fd:
                sock.sendto(os.read(fd, 65536), dst)
            else:
                os.write(fd, sock.recv(65536))
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
aead = AESGCM(bytes(range(32)))
counter = 0
rbuf, sbuf, obuf = bytearray(65600), bytearray(65600), bytearray(65600)
rview, sview, oview = memoryview(rbuf), memoryview(sbuf), memoryview(obuf)
while True:
    for f, _ in ep.poll():
        if f == fd:
            n = os.readv(fd, [rbuf])
            counter += 1
            sview[:12] = counter.to_bytes(12, "big")
            aead.encrypt_into(sview[:12], rview[:n], None, sview[12:28 + n])
            sock.sendto(sview[:28 + n], dst)
        else:
            n = sock.recv_into(rbuf)
            aead.decrypt_into(rview[:12], rview[12:n], None, oview[:n - 28])
            os.write(fd, oview[:n - 28])
"""
DEFAULT = ["direct", "violin", "violin_64k", "tinc_none", "vde_plug"]


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def nsx(ns, *cmd, check=True, **kw):
    return sh("ip", "netns", "exec", ns, *cmd, check=check, **kw)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_packages() -> None:
    need = {"iperf3": "iperf3", "tincd": "tinc", "vde_plug": "vdeplug"}
    if all(shutil.which(tool) for tool in need):
        return
    pkgs = []
    for line in (REPO / "packaging" / "apt-bench.txt").read_text().splitlines():
        pkgs += line.split("#", 1)[0].split()
    log(f"installing {' '.join(pkgs)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-qq", env=env)
    sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs, env=env)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (those gone count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def cpu_busy() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    total = sum(fields)
    return total - fields[3] - fields[4], total


def background_busy() -> float:
    b0, t0 = cpu_busy()
    time.sleep(1)
    b1, t1 = cpu_busy()
    return 100.0 * os.cpu_count() * (b1 - b0) / max(t1 - t0, 1)


def wait_quiet(limit: float, max_wait: int) -> float:
    busy = background_busy()
    for _ in range(max_wait):
        if busy < limit:
            break
        busy = background_busy()
    return busy


@dataclass
class Bench:
    work: Path
    procs: list = field(default_factory=list)
    daemon_pids: list = field(default_factory=list)

    # ---------------------------------------------------------------- topology
    def setup_phys(self, mtu: int = 1500) -> None:
        self.teardown()
        for ns in (NS_A, NS_B):
            sh("ip", "netns", "add", ns)
            nsx(ns, "ip", "link", "set", "lo", "up")
            for key in ("all", "default"):
                nsx(ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1")
        sh("ip", "link", "add", "vswA", "netns", NS_A, "type", "veth", "peer", "name", "vswB",
           "netns", NS_B)
        for ns, dev, ip in ((NS_A, "vswA", PHY_A), (NS_B, "vswB", PHY_B)):
            nsx(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            nsx(ns, "ip", "link", "set", dev, "mtu", str(mtu), "up")

    def start(self, ns, *cmd, daemon=True, user=False, logname=None) -> subprocess.Popen:
        prefix = ["ip", "netns", "exec", ns]
        if user:
            prefix += ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
                       "--inh-caps=-all", "--bounding-set=-all"]
        out = open(self.work / (logname or "bg.log"), "a")
        proc = subprocess.Popen(prefix + list(cmd), stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(proc)
        if daemon:
            self.daemon_pids.append(proc.pid)
        return proc

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs, self.daemon_pids = [], []
        for ns in (NS_A, NS_B):
            sh("ip", "netns", "del", ns, check=False)

    def wait_dev(self, ns, dev) -> None:
        for _ in range(100):
            if nsx(ns, "ip", "link", "show", dev, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{dev} did not appear in {ns}")

    def ifup(self, ns, dev, ip, mtu=None) -> None:
        if mtu:
            nsx(ns, "ip", "link", "set", dev, "mtu", str(mtu))
        nsx(ns, "ip", "link", "set", dev, "up")
        nsx(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)

    # ---------------------------------------------------------------- overlays
    def violin(self, cipher="aes-256-gcm", gso=65000, offload=True, phys_mtu=1500, tap_mtu=1500,
               datapath="c") -> str:
        self.setup_phys(phys_mtu)
        key = self.work / "violin.key"
        key.write_text(secrets.token_hex(32) + "\n")
        key.chmod(0o600)
        os.chown(key, UID, UID)
        for ns, me, peer, vip in ((NS_A, PHY_A, PHY_B, VIRT_A), (NS_B, PHY_B, PHY_A, VIRT_B)):
            nsx(ns, "ip", "tuntap", "add", "dev", "vswt", "mode", "tap", "user", str(UID), "vnet_hdr")
            nsx(ns, "ip", "link", "set", "vswt", "mtu", str(tap_mtu), "gso_max_size", str(gso))
            self.ifup(ns, "vswt", vip)
            cfg = self.work / f"violin-{ns}.yml"
            cfg.write_text(json.dumps({
                "network": "bench", "network_id": 77, "key_file": str(key), "tap": "vswt",
                "listen": me, "port": 5300, "cipher": cipher, "offload": offload,
                "socket_buffer": 4 << 20, "log_level": "warning", "datapath": datapath,
                "peers": [{"name": "peer", "address": peer}]}))
            self.start(ns, sys.executable, "-m", "violin.daemon", "-c", str(cfg), user=True,
                       logname=f"violin-{ns}.log")
        return (f"violin-switchd {cipher}, TAP mtu{tap_mtu} gso_max_size {gso}, offload {offload}, "
                f"phys mtu {phys_mtu}, data path {datapath}")

    def tinc_none(self) -> str:
        self.setup_phys()
        keys = self.work / "tinckeys"
        for h in "AB":
            d = keys / h
            (d / "hosts").mkdir(parents=True, exist_ok=True)
            (d / "tinc.conf").write_text(f"Name = {h}\n")
            if not (d / "rsa_key.priv").exists():
                sh("tincd", "-c", str(d), "-K2048", input="")
        for h, ns, vip in (("A", NS_A, VIRT_A), ("B", NS_B, VIRT_B)):
            d = self.work / "tinc" / h
            shutil.rmtree(d, ignore_errors=True)
            (d / "hosts").mkdir(parents=True)
            shutil.copy(keys / h / "rsa_key.priv", d)
            conf = (f"Name = {h}\nMode = switch\nDeviceType = tap\nDevice = /dev/net/tun\n"
                    f"Interface = tinc{h}\nAddressFamily = ipv4\n")
            if h == "A":
                conf += "ConnectTo = B\n"
            (d / "tinc.conf").write_text(conf)
            up = d / "tinc-up"
            up.write_text(f"#!/bin/sh\nip link set $INTERFACE up\nip addr add {vip}/24 dev $INTERFACE\n")
            up.chmod(0o755)
        for h, ip in (("A", PHY_A), ("B", PHY_B)):
            pub = [l for l in (keys / h / "hosts" / h).read_text().splitlines() if not l.startswith("Name")]
            text = f"Address = {ip}\nPort = 655\nCipher = none\nDigest = none\n" + "\n".join(pub) + "\n"
            for owner in "AB":
                (self.work / "tinc" / owner / "hosts" / h).write_text(text)
        for h, ns in (("B", NS_B), ("A", NS_A)):
            d = self.work / "tinc" / h
            self.start(ns, "tincd", "-c", str(d), "-D", f"--pidfile={d}/pid", f"--logfile={d}/log")
        self.wait_dev(NS_A, "tincA")
        self.wait_dev(NS_B, "tincB")
        return "tinc 1.0 switch mode, Cipher/Digest none, tap mtu1500"

    def vde_plug(self) -> str:
        self.setup_phys()
        for ns, peer in ((NS_A, PHY_B), (NS_B, PHY_A)):
            self.start(ns, "vde_plug", "tap://vswvde", f"udp://5000->{peer}:5000")
        for ns, vip in ((NS_A, VIRT_A), (NS_B, VIRT_B)):
            self.wait_dev(ns, "vswvde")
            self.ifup(ns, "vswvde", vip, 1500)
        return "vde_plug tap:// <-> udp://, tap mtu1500"

    def py_forwarder(self, cipher: str) -> str:
        self.setup_phys()
        script = self.work / "py_forwarder.py"
        script.write_text(PY_FORWARDER)
        for ns, me, peer in ((NS_A, PHY_A, PHY_B), (NS_B, PHY_B, PHY_A)):
            self.start(ns, sys.executable, str(script), "vswpy", me, peer, "5301", cipher,
                       logname=f"py-{ns}.log")
        for ns, vip in ((NS_A, VIRT_A), (NS_B, VIRT_B)):
            self.wait_dev(ns, "vswpy")
            self.ifup(ns, "vswpy", vip, 1500)
        return f"Python epoll forwarder, one frame per datagram, {'AES-256-GCM' if cipher == 'aes' else 'no authentication'}"

    def variant(self, name: str) -> tuple[str, str]:
        if name == "direct":
            self.setup_phys()
            return PHY_B, "veth mtu1500 (kernel)"
        makers = {
            "violin": lambda: self.violin(),
            "violin_nocrypt": lambda: self.violin(cipher="none"),
            "violin_py": lambda: self.violin(datapath="python"),
            "violin_gso8k": lambda: self.violin(gso=8000),
            "violin_nooffload": lambda: self.violin(offload=False),
            "violin_64k": lambda: self.violin(phys_mtu=65000),
            "violin_fit": lambda: self.violin(offload=False, tap_mtu=1412),
            "tinc_none": self.tinc_none,
            "vde_plug": self.vde_plug,
            "py_naive": lambda: self.py_forwarder("none"),
            "py_aes": lambda: self.py_forwarder("aes"),
        }
        return VIRT_B, makers[name]()

    # ---------------------------------------------------------------- measuring
    def daemon_cpu(self) -> float:
        return cpu_seconds(self.daemon_pids)

    def iperf(self, target: str, seconds: int, streams: int) -> tuple[float, float]:
        c0 = self.daemon_cpu()
        res = nsx(NS_A, "iperf3", "-c", target, "-p", "5299", "-t", str(seconds), "-P", str(streams),
                  "-J", check=False, timeout=seconds + 30)
        cpu = 100 * (self.daemon_cpu() - c0) / seconds
        try:
            return json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6, cpu
        except (ValueError, KeyError):
            return 0.0, cpu

    def ping(self, target: str, count: int = 200, interval: float = 0.01) -> tuple[float, float]:
        """Mean and median RTT in us of ``count`` pings ``interval`` s apart."""
        out = nsx(NS_A, "ping", "-n", "-c", str(count), "-i", str(interval), target, check=False).stdout
        rtts = [float(word[5:]) * 1000 for line in out.splitlines() for word in line.split()
                if word.startswith("time=")]
        if not rtts:
            return float("nan"), float("nan")
        return statistics.mean(rtts), statistics.median(rtts)

    def measure(self, name: str, seconds: int, interval: float = 0.01, tcp: bool = True) -> dict:
        target, note = self.variant(name)
        for _ in range(60):
            if nsx(NS_A, "ping", "-c1", "-W1", target, check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{name}: {target} unreachable")
        self.start(NS_B, "iperf3", "-s", "-p", "5299", daemon=False)
        nsx(NS_A, "ping", "-c", "5", "-i", "0.05", target, check=False)
        time.sleep(0.5)
        rtt, rtt_median = self.ping(target, interval=interval)
        tcp1 = tcp4 = cpu1 = 0.0
        if tcp:
            tcp1, cpu1 = self.iperf(target, seconds, 1)
            time.sleep(0.5)
            tcp4, _ = self.iperf(target, seconds, 4)
        return {"variant": name, "tcp1": tcp1, "tcp4": tcp4, "rtt": rtt, "rtt_median": rtt_median,
                "cpu": cpu1, "note": note}


def table(rows: list[dict], runs: int) -> str:
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["variant"], []).append(row)
    direct = statistics.mean(r["rtt"] for r in by["direct"]) if "direct" in by else None
    direct_median = statistics.mean(r["rtt_median"] for r in by["direct"]) if "direct" in by else None
    peers = [statistics.mean(r["tcp1"] for r in by[v]) for v in ("tinc_none", "vde_plug") if v in by]
    best_peer = max(peers) if peers else None
    out = ["| variant | TCP 1 stream Mb/s | TCP 4 streams Mb/s | x best peer (1 stream) | RTT us | "
           "added RTT us | RTT median us | added median us | daemons CPU % | load1 | note |", "|" + "---|" * 11]
    for name, rs in by.items():
        t1 = statistics.mean(r["tcp1"] for r in rs)
        t4 = statistics.mean(r["tcp4"] for r in rs)
        rtt = statistics.mean(r["rtt"] for r in rs)
        spread = f" ({min(r['tcp1'] for r in rs):.0f}-{max(r['tcp1'] for r in rs):.0f})" if runs > 1 else ""
        ratio = f"{t1 / best_peer:.2f}" if best_peer else "-"
        added = f"{rtt - direct:+.0f}" if direct is not None and name != "direct" else "-"
        med = statistics.mean(r["rtt_median"] for r in rs)
        added_med = f"{med - direct_median:+.0f}" if direct_median is not None and name != "direct" else "-"
        out.append(f"| {name} | {t1:.0f}{spread} | {t4:.0f} | {ratio} | {rtt:.0f} | {added} | {med:.0f} | {added_med} | "
                   f"{statistics.mean(r['cpu'] for r in rs):.0f} | {max(r['load1'] for r in rs):.2f} | "
                   f"{rs[0]['note']} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", type=int, default=10, help="iperf3 seconds per test (default 10)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--variants", default=",".join(DEFAULT),
                    help=f"comma-separated, from {','.join(ALL)} (default {','.join(DEFAULT)})")
    ap.add_argument("--quiet", type=float, default=40,
                    help="before each variant, wait until other load is below this %% of one core")
    ap.add_argument("--quiet-wait", type=int, default=120, help="... but at most this many seconds")
    ap.add_argument("--ping-interval", type=float, default=0.01,
                    help="seconds between pings (default 0.01; the daemons sleep in between, so a "
                         "longer gap finds colder caches)")
    ap.add_argument("--no-tcp", action="store_true", help="ping only, no iperf3")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(ALL)
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL)}")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces, TAP devices)")
    ensure_packages()
    # The daemons attach to their TAPs unprivileged through a 0666 /dev/net/tun, as on a host
    # with udev; this machine's own node keeps its mode.
    rc = rerun_with_private_tun([sys.executable, *sys.argv])
    if rc is not None:
        return rc
    work = Path(tempfile.mkdtemp(prefix="vsw-bench-"))
    work.chmod(0o755)
    bench = Bench(work)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    rows: list[dict] = []
    log(f"kernel {os.uname().release}, {os.cpu_count()} cpus, {args.time} s per test, work dir {work}")
    try:
        for run in range(1, args.runs + 1):
            for name in variants:
                busy = wait_quiet(args.quiet, args.quiet_wait)
                load1 = os.getloadavg()[0]
                log(f"run {run}: {name} (other load {busy:.0f}% of a core, load1 {load1:.2f})")
                try:
                    row = bench.measure(name, args.time, args.ping_interval, not args.no_tcp)
                except (RuntimeError, subprocess.SubprocessError) as err:
                    log(f"{name} failed: {err}")
                    row = {"variant": name, "tcp1": 0.0, "tcp4": 0.0, "rtt": float("nan"),
                           "rtt_median": float("nan"), "cpu": 0.0,
                           "note": f"FAILED: {err}"}
                row.update(run=run, load1=load1, busy=busy)
                rows.append(row)
                log(f"  {row['tcp1']:.0f} Mb/s (1), {row['tcp4']:.0f} Mb/s (4), RTT {row['rtt']:.0f} us "
                    f"(median {row['rtt_median']:.0f}), "
                    f"daemons {row['cpu']:.0f}% CPU")
                bench.teardown()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
    finally:
        bench.teardown()
        shutil.rmtree(work, ignore_errors=True)
    if rows:
        print(table(rows, args.runs))
        print(f"\nuptime: {sh('uptime').stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
