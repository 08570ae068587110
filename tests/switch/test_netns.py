"""The daemon on real TAPs in network namespaces: three hosts (plus one that joins later), two
virtual domains on the same hosts, daemons run as an unprivileged uid. Every daemon uses the C
data path except blue's on host 3, which uses the Python one: blue's pings and TCP between every
pair show the two speak the same wire format."""

from __future__ import annotations

import ctypes
import itertools
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from violin.codec import HEADER, Sealer
from violin.frames import build_frame

from violin_netlab import Capture, Domain, Lab, nsx, tcp_transfer

pytestmark = [pytest.mark.root]

RED = Domain("red", 2011, "10.201.11", 5311, "vswred")
BLUE = Domain("blue", 2012, "10.201.12", 5312, "vswblue")
GREEN = Domain("green", 2013, "10.201.13", 5313, "vswgreen")
HOSTS = (1, 2, 3)
JOINER = 4
MARK = 0x88B5  # IEEE local experimental ethertype
CLONE_NEWNET = 0x40000000


@pytest.fixture(scope="module")
def lab(as_root):
    for tool in ("ip", "setpriv", "tcpdump", "ping"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (see packaging/apt-packages.txt)")
    lab = Lab(hosts=4)
    try:
        for d in (RED, BLUE):
            for h in HOSTS:
                lab.add_tap(h, d)
                extra = {"metrics": f"{lab.phys_ip(h)}:9301"} if (d, h) == (RED, 1) else {}
                if (d, h) == (BLUE, 3):
                    extra["datapath"] = "python"
                lab.write_config(h, d, [p for p in HOSTS if p != h], **extra)
                lab.start_daemon(h, d)
        # host 4 is in red only, and nobody has it as a peer yet
        lab.add_tap(JOINER, RED)
        lab.write_config(JOINER, RED, list(HOSTS))
        lab.start_daemon(JOINER, RED)
        # green: one daemon on host 2 whose only peer (host 1, port 5313) runs no daemon
        lab.add_tap(2, GREEN, address=False)
        lab.write_config(2, GREEN, [1])
        lab.start_daemon(2, GREEN)
        for (name, h) in list(lab.procs):
            lab.wait_ready(h, {"red": RED, "blue": BLUE, "green": GREEN}[name])
        yield lab
    finally:
        lab.close()


def test_daemons_run_unprivileged(lab):
    # ip netns exec execs setpriv, which execs python: the Popen pid is the daemon itself
    for (name, h), proc in lab.procs.items():
        assert proc.poll() is None, lab.log(h, {"red": RED, "blue": BLUE, "green": GREEN}[name])
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            assert b"violin.daemon" in fh.read()
        with open(f"/proc/{proc.pid}/status") as fh:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
        assert status["Uid"].split() == ["64201"] * 4
        assert status["CapEff"] == status["CapPrm"] == "0000000000000000"
        domain = {"red": RED, "blue": BLUE, "green": GREEN}[name]
        want = "python" if (domain, h) == (BLUE, 3) else "c"
        assert f"data path {want}\n" in lab.log(h, domain)


@pytest.mark.parametrize("domain", [RED, BLUE], ids=["red", "blue"])
def test_ping_every_pair(lab, domain):
    failed = [(a, b) for a, b in itertools.permutations(HOSTS, 2)
              if not lab.ping(a, domain.ip(b), count=2)]
    assert failed == []


@pytest.mark.parametrize("domain", [RED, BLUE], ids=["red", "blue"])
def test_tcp_every_pair(lab, domain):
    for a, b in itertools.combinations(HOSTS, 2):
        assert tcp_transfer(lab, a, b, domain.ip(b), size=4 << 20), f"TCP h{a} -> h{b} in {domain.name}"


def inject(lab: Lab, host: int, dev: str, dst_mac: str, count: int) -> None:
    """Sends ``count`` raw frames of the marker ethertype out of ``dev`` (into the daemon)."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((sys.argv[1], 0))\n"
        "src=open('/sys/class/net/%s/address' % sys.argv[1]).read().strip()\n"
        "f=bytes.fromhex(sys.argv[2].replace(':',''))+bytes.fromhex(src.replace(':',''))"
        "+b'\\x88\\xb5'+b'VIOLIN-ISOLATION'*8\n"
        "for _ in range(int(sys.argv[3])): s.send(f)\n")
    nsx(lab.ns(host), "python3", "-c", code, dev, dst_mac, str(count))


def marked(frames: list[bytes]) -> int:
    return sum(1 for f in frames if f[12:14] == struct.pack("!H", MARK))


def test_nothing_crosses_domains(lab):
    """Frames sent into red (to blue's MACs and to broadcast) reach red TAPs, never blue ones."""
    caps = {(d.name, h): Capture(lab, lab.ns(h), d.tap, f"iso-{d.name}-{h}") for d in (RED, BLUE)
            for h in (2, 3)}
    blue_rx = {h: lab.stats(h, BLUE)["rx_datagrams"] for h in (2, 3)}
    inject(lab, 1, RED.tap, lab.mac(2, BLUE.tap), 20)
    inject(lab, 1, RED.tap, "ff:ff:ff:ff:ff:ff", 20)
    got = {key: marked(cap.stop()) for key, cap in caps.items()}
    assert got[("red", 2)] == 40 and got[("red", 3)] == 40      # unknown unicast + broadcast flooded
    assert got[("blue", 2)] == 0 and got[("blue", 3)] == 0
    assert {h: lab.stats(h, BLUE)["rx_datagrams"] for h in (2, 3)} == blue_rx
    # and the same the other way round: blue's frames stay in blue
    caps = {h: Capture(lab, lab.ns(h), RED.tap, f"iso-back-{h}") for h in (2, 3)}
    inject(lab, 1, BLUE.tap, "ff:ff:ff:ff:ff:ff", 10)
    assert [marked(c.stop()) for c in caps.values()] == [0, 0]


def test_unicast_is_not_flooded_after_learning(lab):
    assert lab.ping(1, RED.ip(2), count=2)           # learn both ways (ARP reply is unicast)
    before1, before3 = lab.stats(1, RED), lab.stats(3, RED)
    assert lab.ping(1, RED.ip(2), count=20)
    assert tcp_transfer(lab, 1, 2, RED.ip(2), size=1 << 20, port=7202)
    after1, after3 = lab.stats(1, RED), lab.stats(3, RED)
    assert after1["tx_unicast_frames"] - before1["tx_unicast_frames"] >= 20
    assert after1["tx_flooded_frames"] == before1["tx_flooded_frames"]
    assert after3["rx_datagrams"] == before3["rx_datagrams"]   # the bystander saw nothing
    fdb = {e["mac"]: e["peer"] for e in lab.ctl(1, RED, verb="fdb")["fdb"]}
    assert fdb.get(lab.mac(2, RED.tap)) == "h2"


def test_peer_joins_and_leaves_at_run_time(lab):
    old_pids = {key: proc.pid for key, proc in lab.procs.items()}
    # host 4 is not a peer of anybody yet: its datagrams are refused
    before = lab.stats(1, RED)["drops"]["not_peer"]
    assert not lab.ping(JOINER, RED.ip(1), count=1, timeout=1)
    assert lab.stats(1, RED)["drops"]["not_peer"] > before
    for h in HOSTS:
        answer = lab.ctl(h, RED, verb="peer-add", name="h4", address=lab.phys_ip(JOINER))
        assert answer["changed"] is True
    for h in HOSTS:
        assert lab.ping(JOINER, RED.ip(h), count=2), f"h4 -> h{h} after join"
    assert tcp_transfer(lab, JOINER, 3, RED.ip(3), size=1 << 20, port=7203)
    # host 4 leaves host 1's peers: h1 <-> h4 stops, the others go on
    assert lab.ctl(1, RED, verb="peer-remove", peer="h4")["changed"] is True
    nsx(lab.ns(1), "ip", "neigh", "flush", "dev", RED.tap)
    assert not lab.ping(1, RED.ip(JOINER), count=2, timeout=1)
    assert lab.ping(1, RED.ip(2), count=1) and lab.ping(2, RED.ip(JOINER), count=1)
    assert all(e["peer"] != "h4" for e in lab.ctl(1, RED, verb="fdb")["fdb"])
    # and joins again
    lab.ctl(1, RED, verb="peer-add", name="h4", address=lab.phys_ip(JOINER))
    assert lab.ping(1, RED.ip(JOINER), count=2)
    assert {key: proc.pid for key, proc in lab.procs.items()} == old_pids  # nobody restarted
    assert all(proc.poll() is None for proc in lab.procs.values())


def test_violinctl_and_prometheus_over_http(lab):
    ctl = [sys.executable, "-m", "violin.ctl", "-s", lab.socket(1, RED)]
    listing = subprocess.run(ctl + ["peers", "list"], capture_output=True, text=True, check=True).stdout
    assert [line.split()[0] for line in listing.splitlines()][:2] == ["h2", "h3"]
    text = subprocess.run(ctl + ["stats"], capture_output=True, text=True, check=True).stdout
    assert "drops.replay" in text and "tx_unicast_frames" in text
    bad = subprocess.run(ctl + ["peers", "remove", "nobody"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no peer nobody" in bad.stderr and "Traceback" not in bad.stderr
    gone = subprocess.run([sys.executable, "-m", "violin.ctl", "-s", str(lab.dir / "absent.sock"), "stats"],
                          capture_output=True, text=True)
    assert gone.returncode == 2 and "is violin-switchd running" in gone.stderr
    fetch = ("import urllib.request,sys; "
             "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
    body = nsx(lab.ns(1), sys.executable, "-c", fetch, f"http://{lab.phys_ip(1)}:9301/metrics").stdout
    assert 'violin_peers{network="red"}' in body
    assert 'violin_forwarded_frames_total{decision="unicast",network="red"}' in body


def test_sighup_reload_applies_config_peers(lab):
    lab.write_config(3, RED, [1, 2, JOINER])
    lab.procs[("red", 3)].send_signal(1)  # SIGHUP to `ip netns exec`, which exec'd setpriv -> python
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        peers = {p["name"]: p["origin"] for p in lab.ctl(3, RED, verb="peers")["peers"]}
        if peers.get("h4") == "config":
            break
        time.sleep(0.1)
    assert peers == {"h1": "config", "h2": "config", "h4": "config"}


def test_physical_link_carries_only_udp_to_daemon_ports(lab):
    marker = "5649_4f4c_494e".replace("_", "")  # ping pattern bytes, must never show in clear
    cap = Capture(lab, lab.ns(1), "vswphy", "phys")
    assert lab.ping(1, RED.ip(2), count=5, extra=("-p", marker, "-s", "1200"))
    assert lab.ping(1, BLUE.ip(3), count=5, extra=("-p", marker))
    assert tcp_transfer(lab, 1, 3, BLUE.ip(3), size=2 << 20, port=7204)
    frames = cap.stop()
    assert len(frames) > 50
    ports = {RED.port, BLUE.port}
    phys = {socket.inet_aton(lab.phys_ip(h)) for h in lab.hosts}
    for f in frames:
        ethertype = f[12:14]
        if ethertype == b"\x08\x06":                       # ARP between physical addresses only
            assert f[28:32] in phys and f[38:42] in phys, f.hex()
            continue
        assert ethertype == b"\x08\x00", f"non-IPv4 frame on the physical link: {f[:64].hex()}"
        ip = f[14:]
        ihl = (ip[0] & 15) * 4
        assert ip[9] == 17, f"non-UDP IPv4 packet: {ip[:40].hex()}"
        assert ip[12:16] in phys and ip[16:20] in phys
        frag_offset = struct.unpack("!H", ip[6:8])[0] & 0x1FFF
        if frag_offset == 0:                               # has the UDP header
            sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
            assert sport in ports and dport in ports
        assert bytes.fromhex(marker) not in f


def _udp(lab: Lab, host: int, port: int):
    """A UDP socket bound in host's namespace (sockets keep the namespace they were made in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{lab.ns(host)}", os.O_RDONLY)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        assert libc.setns(fd, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((lab.phys_ip(host), port))
        finally:
            assert libc.setns(own, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
        os.close(own)
    return s


def _send_paced(lab: Lab, sock, datagrams, target, expect_total: int) -> None:
    for i in range(0, len(datagrams), 400):
        for d in datagrams[i:i + 400]:
            sock.sendto(d, target)
        deadline = time.monotonic() + 10
        while lab.stats(2, GREEN)["rx_datagrams"] < expect_total + min(i + 400, len(datagrams)):
            assert time.monotonic() < deadline, "daemon stopped reading"
            time.sleep(0.02)


def test_forged_replayed_wrong_network_and_random_datagrams_are_dropped(lab):
    """>= 10,000 bad datagrams at the green daemon on host 2: all dropped and counted by reason,
    none reaches its TAP, and the daemon goes on delivering good ones."""
    target = (lab.phys_ip(2), GREEN.port)
    secret = bytes.fromhex(GREEN.key)
    peer_sock = _udp(lab, 1, GREEN.port)       # the configured peer's address and port
    stranger = _udp(lab, 1, GREEN.port + 1)    # not a peer
    rng = random.Random(20)
    start = lab.stats(2, GREEN)
    tap_rx = lab.tap_counter(2, GREEN.tap, "rx_packets")
    frame = build_frame(b"\xff" * 6, bytes.fromhex("02aabbccddee"), MARK, b"good" * 20)

    sealer = Sealer(GREEN.network_id, 77, secret, counter_start=10**6)
    good = bytes(sealer.seal(frame))
    wrong_net = Sealer(4242, 77, secret, counter_start=1)
    wrong_key = Sealer(GREEN.network_id, 77, bytes(32), counter_start=10**7)
    batches = {
        "random": [rng.randbytes(rng.randrange(0, 1600)) for _ in range(2500)],
        "network": [bytes(wrong_net.seal(frame)) for _ in range(2000)],
        "auth": [bytes(wrong_key.seal(frame)) for _ in range(1000)]
        + [HEADER.pack(1, 1, 0, GREEN.network_id, 77, 2 * 10**7 + i) + rng.randbytes(100)
           for i in range(1000)],
        "replay": [good] + [good] * 2000,           # the first one is genuine
        "not_peer": [bytes(sealer.seal(frame)) for _ in range(1500)],
    }
    total = 0
    for name, datagrams in batches.items():
        _send_paced(lab, stranger if name == "not_peer" else peer_sock, datagrams, target, total)
        total += len(datagrams)
    late = bytes(sealer.seal(frame))                    # a genuine one after the storm
    peer_sock.sendto(late, target)
    time.sleep(0.3)
    peer_sock.close()
    stranger.close()

    end = lab.stats(2, GREEN)
    drops = {k: end["drops"][k] - start["drops"][k] for k in end["drops"]}
    assert total >= 10_000
    assert end["rx_datagrams"] - start["rx_datagrams"] == total + 1
    assert end["tap_tx_frames"] - start["tap_tx_frames"] == 2
    assert sum(drops.values()) == total - 1
    assert drops["network"] >= 2000 and drops["auth"] >= 2000
    assert drops["replay"] == 2000 and drops["not_peer"] == 1500
    assert drops["tap_write"] == 0
    assert lab.tap_counter(2, GREEN.tap, "rx_packets") - tap_rx == 2
    assert lab.procs[("green", 2)].poll() is None
