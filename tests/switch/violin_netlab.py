"""A small physical network of hosts in network namespaces, with VIOLIN daemons on them.

Each host is a network namespace joined to a bridge (in its own namespace) by a veth pair: that
is the "physical LAN", 10.201.0.0/24. Virtual domains get a TAP per host, created by root for an
unprivileged uid, and a violin-switchd run as that uid. Everything is torn down by ``close``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from broker.lab.devnode import PrivateTun
from violin.ctl import request

DAEMON_UID = 64201  # no account needed: the TAP is owned by the number


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def nsx(ns: str, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, check=check, **kw)


@dataclass
class Domain:
    name: str
    network_id: int
    subnet: str   # "10.201.11" -> hosts .1, .2, ...
    port: int
    tap: str
    key: str = field(default_factory=lambda: secrets.token_hex(32))

    def ip(self, host: int) -> str:
        return f"{self.subnet}.{host}"


class Lab:
    def __init__(self, hosts: int) -> None:
        self.tag = secrets.token_hex(2)
        self.dir = Path(tempfile.mkdtemp(prefix=f"vsw-{self.tag}-"))
        self.dir.chmod(0o755)
        self.lan = f"vsw-{self.tag}-lan"
        self.hosts = list(range(1, hosts + 1))
        self.procs: dict[tuple[str, int], subprocess.Popen] = {}
        self.namespaces: list[str] = []
        # The daemons attach to their TAPs as DAEMON_UID through a 0666 /dev/net/tun, as on a
        # host with udev; this machine's own node keeps its mode (it may be 0600).
        self.tun = PrivateTun().__enter__()
        sh("ip", "netns", "add", self.lan)
        self.namespaces.append(self.lan)
        for key in ("all", "default"):
            nsx(self.lan, "sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1")
        nsx(self.lan, "ip", "link", "add", "vswbr", "type", "bridge")
        nsx(self.lan, "ip", "link", "set", "vswbr", "up")
        for h in self.hosts:
            self.add_host(h)

    # ------------------------------------------------------------------ physical
    def ns(self, host: int) -> str:
        return f"vsw-{self.tag}-h{host}"

    def phys_ip(self, host: int) -> str:
        return f"10.201.0.{host}"

    def add_host(self, h: int) -> None:
        ns = self.ns(h)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        for key in ("all", "default"):
            nsx(ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1")
        nsx(ns, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "vswphy", "netns", ns, "type", "veth", "peer", "name", f"vswl{h}",
           "netns", self.lan)
        nsx(self.lan, "ip", "link", "set", f"vswl{h}", "master", "vswbr", "up")
        nsx(ns, "ip", "addr", "add", f"{self.phys_ip(h)}/24", "dev", "vswphy")
        nsx(ns, "ip", "link", "set", "vswphy", "up")

    # ------------------------------------------------------------------ virtual
    def add_tap(self, h: int, d: Domain, address: bool = True) -> None:
        ns = self.ns(h)
        nsx(ns, "ip", "tuntap", "add", "dev", d.tap, "mode", "tap", "user", str(DAEMON_UID), "vnet_hdr")
        nsx(ns, "ip", "link", "set", d.tap, "mtu", "1500", "gso_max_size", "65000", "up")
        if address:
            nsx(ns, "ip", "addr", "add", f"{d.ip(h)}/24", "dev", d.tap)

    def config_path(self, h: int, d: Domain) -> Path:
        return self.dir / f"{d.name}-h{h}.yml"

    def socket(self, h: int, d: Domain) -> str:
        return str(self.dir / f"{d.name}-h{h}.sock")

    def write_config(self, h: int, d: Domain, peers: list[int] | list[dict], **extra) -> Path:
        keyfile = self.dir / f"{d.name}.key"
        if not keyfile.exists():
            keyfile.write_text(d.key + "\n")
            keyfile.chmod(0o600)
            os.chown(keyfile, DAEMON_UID, DAEMON_UID)
        peer_list = [p if isinstance(p, dict) else
                     {"name": f"h{p}", "address": self.phys_ip(p), "port": d.port} for p in peers]
        cfg = {"network": d.name, "network_id": d.network_id, "key_file": str(keyfile),
               "tap": d.tap, "listen": self.phys_ip(h), "port": d.port,
               "control_socket": self.socket(h, d), "fdb_ageing": 120, "peers": peer_list, **extra}
        path = self.config_path(h, d)
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start_daemon(self, h: int, d: Domain) -> subprocess.Popen:
        log = open(self.dir / f"{d.name}-h{h}.log", "w")
        proc = subprocess.Popen(
            [*self.tun.prefix, "ip", "netns", "exec", self.ns(h), "setpriv", f"--reuid={DAEMON_UID}",
             f"--regid={DAEMON_UID}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
             sys.executable, "-m", "violin.daemon", "-c", str(self.config_path(h, d))],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[(d.name, h)] = proc
        os.chown(self.dir, DAEMON_UID, 0)  # the daemon creates its control socket here
        return proc

    def wait_ready(self, h: int, d: Domain, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[(d.name, h)].poll() is not None:
                break
            try:
                request(self.socket(h, d), {"verb": "stats"}, timeout=1)
                return
            except Exception:
                time.sleep(0.1)
        raise AssertionError(f"daemon {d.name}@h{h} not ready: {self.log(h, d)}")

    def log(self, h: int, d: Domain) -> str:
        return (self.dir / f"{d.name}-h{h}.log").read_text()

    def ctl(self, h: int, d: Domain, **payload) -> dict:
        return request(self.socket(h, d), payload)

    def stats(self, h: int, d: Domain) -> dict:
        return self.ctl(h, d, verb="stats")["stats"]

    def tap_counter(self, h: int, tap: str, which: str) -> int:
        out = nsx(self.ns(h), "cat", f"/sys/class/net/{tap}/statistics/{which}").stdout
        return int(out)

    def mac(self, h: int, dev: str) -> str:
        return json.loads(nsx(self.ns(h), "ip", "-j", "link", "show", dev).stdout)[0]["address"]

    def ping(self, h: int, ip: str, count: int = 1, timeout: int = 2, extra: tuple = ()) -> bool:
        res = nsx(self.ns(h), "ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", str(timeout),
                  *extra, ip, check=False)
        return res.returncode == 0

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.tun.__exit__(None, None, None)


class Capture:
    """tcpdump on one interface of a namespace, into a pcap file read back with ``frames()``."""

    def __init__(self, lab: Lab, host_ns: str, dev: str, name: str) -> None:
        self.path = lab.dir / f"{name}.pcap"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", host_ns, "tcpdump", "-i", dev, "--immediate-mode", "-U", "-n", "-s", "0", "-w",
             str(self.path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # tcpdump says "listening on" once it captures
            if self.path.exists() and self.path.stat().st_size >= 24:
                break
            time.sleep(0.05)
        time.sleep(0.2)

    def stop(self) -> list[bytes]:
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        return read_pcap(self.path)


def read_pcap(path: Path) -> list[bytes]:
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    frames, offset = [], 24
    while offset + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from(endian + "IIII", data, offset)
        frames.append(data[offset + 16:offset + 16 + incl])
        offset += 16 + incl
    return frames


TCP_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
s.settimeout(20); c, _ = s.accept(); c.settimeout(20); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
c.close(); print(n, h.hexdigest(), flush=True)
"""

TCP_CLIENT = r"""
import socket, sys
data = bytes(range(256)) * (int(sys.argv[3]) // 256)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
c.sendall(data); c.close()
"""


def tcp_transfer(lab: Lab, src: int, dst: int, ip: str, size: int = 2 << 20, port: int = 7201) -> bool:
    """Sends ``size`` bytes over TCP from host src to ip (on host dst); True if all arrived intact."""
    import hashlib

    server = subprocess.Popen(["ip", "netns", "exec", lab.ns(dst), sys.executable, "-c", TCP_SERVER,
                               ip, str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        client = nsx(lab.ns(src), sys.executable, "-c", TCP_CLIENT, ip, str(port), str(size),
                     check=False, timeout=30)
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    data = bytes(range(256)) * (size // 256)
    return client.returncode == 0 and out.split() == [str(len(data)), hashlib.sha256(data).hexdigest()]
