"""A daemon under attack: while a TCP stream runs between two daemons on real TAPs, a third host
on the physical LAN sends VIOLIN_ATTACK_DATAGRAMS (default 100,000) hostile datagrams at one of
them as fast as it can: forged, tampered, replayed, truncated, oversized, wrong-network, own
sender id, not from a peer, random (tests/switch/violin_attack.py). Neither daemon may crash,
no attacker frame may reach the TAP, every datagram the daemon read is delivered or counted
under its drop reason, and the stream goes on and arrives intact. Nothing here is timed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter

import pytest

from violin_attack import (GENUINE, MARK, STREAM_CLIENT, STREAM_SERVER, Catcher, Mix, Sniffer,
                           Spoofer, build, device_drops, inject, sender_id, udp_snmp, wait_for)
from violin_netlab import Domain, Lab, nsx, tcp_transfer

pytestmark = [pytest.mark.root, pytest.mark.slow]

ATK = Domain("atk", 2021, "10.201.21", 5321, "vswatk")
PEER, TARGET, ATTACKER = 1, 2, 3
COUNT = int(os.environ.get("VIOLIN_ATTACK_DATAGRAMS", "100000"))


@pytest.fixture
def lab(as_root):
    for tool in ("ip", "setpriv", "tcpdump", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (see packaging/apt-packages.txt)")
    lab = Lab(hosts=3)  # host 3 runs no daemon: it is the attacker
    try:
        for h, other in ((PEER, TARGET), (TARGET, PEER)):
            lab.add_tap(h, ATK)
            lab.write_config(h, ATK, [other])
            lab.start_daemon(h, ATK)
        for h in (PEER, TARGET):
            lab.wait_ready(h, ATK)
        yield lab
    finally:
        lab.close()


def drops_between(before: dict, after: dict) -> Counter:
    return Counter({k: after["drops"][k] - before["drops"][k] for k in after["drops"]
                    if after["drops"][k] != before["drops"][k]})


def test_daemon_under_attack_keeps_running_delivers_nothing_bad_and_carries_traffic(lab):
    assert COUNT >= 1000, "VIOLIN_ATTACK_DATAGRAMS is at least 1,000"
    port = ATK.port
    peer, target = (lab.phys_ip(PEER), port), (lab.phys_ip(TARGET), port)
    assert lab.ping(PEER, ATK.ip(TARGET), count=3)

    # real datagrams of the peer, for replays: marker frames and a TCP transfer, caught on the
    # target while its daemon accepts them (none lost on the way: each was seen by the daemon)
    catcher = Catcher(lab.ns(TARGET), peer, port)
    try:
        snmp = udp_snmp(nsx, lab.ns(TARGET))
        inject(nsx, lab.ns(PEER), ATK.tap, 300)
        assert tcp_transfer(lab, PEER, TARGET, ATK.ip(TARGET), size=1 << 20, port=7301)
    finally:
        captured = catcher.stop()
    assert udp_snmp(nsx, lab.ns(TARGET))["Udp.RcvbufErrors"] == snmp["Udp.RcvbufErrors"]
    assert len(captured) >= 300

    mix = build(COUNT, network_id=ATK.network_id, secret=bytes.fromhex(ATK.key), peer=peer,
                target=target, attacker=(lab.phys_ip(ATTACKER), port),
                own_sender=sender_id(*target), peer_sender=sender_id(*peer), captured=captured)
    assert len(mix.datagrams) == COUNT and all(mix.kinds.values())

    sniffer = Sniffer(lab.ns(TARGET), ATK.tap, lab.dir / "marker.pcap", f"ether proto {MARK:#06x}")
    try:
        attack(lab, mix, sniffer)
    finally:
        sniffer.stop()


def attack(lab: Lab, mix: Mix, sniffer: Sniffer) -> None:
    expected = mix.expected_drops()
    packets = mix.packets
    procs = {h: lab.procs[(ATK.name, h)] for h in (PEER, TARGET)}
    pids = {h: p.pid for h, p in procs.items()}
    stop = lab.dir / "stop-stream"
    server = subprocess.Popen(["ip", "netns", "exec", lab.ns(TARGET), sys.executable, "-c",
                               STREAM_SERVER, ATK.ip(TARGET), "7302"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = None
    spoofer = Spoofer(lab.ns(ATTACKER), lab.phys_ip(TARGET))
    try:
        assert server.stdout.readline().strip() == "ready"
        # quiet here: the counters below cover the stream and the attack from end to end
        before = {h: lab.stats(h, ATK) for h in (PEER, TARGET)}
        tap_before = lab.tap_counter(TARGET, ATK.tap, "rx_packets")
        snmp_before = udp_snmp(nsx, lab.ns(TARGET))
        dev_before = device_drops(nsx, lab.namespaces)
        client = subprocess.Popen(["ip", "netns", "exec", lab.ns(PEER), sys.executable, "-c",
                                   STREAM_CLIENT, ATK.ip(TARGET), "7302", str(stop)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: lab.stats(TARGET, ATK)["tap_tx_frames"]
                        - before[TARGET]["tap_tx_frames"] > 200, 30), "the stream does not flow"
        start = lab.stats(TARGET, ATK)

        began = time.monotonic()
        sent = spoofer.send(packets)
        took = time.monotonic() - began

        during = lab.stats(TARGET, ATK)
        stop.touch()
        client_out, client_err = client.communicate(timeout=120)
        server_out, server_err = server.communicate(timeout=120)
    finally:
        stop.touch()
        spoofer.close()
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    # the daemon has read everything queued for it once its counters stand still
    seen = [-1]

    def settled() -> bool:
        now = lab.stats(TARGET, ATK)["rx_datagrams"]
        still, seen[0] = now == seen[0], now
        return still

    wait_for(settled, 30, interval=0.3)
    after = {h: lab.stats(h, ATK) for h in (PEER, TARGET)}
    tap_after = lab.tap_counter(TARGET, ATK.tap, "rx_packets")
    snmp_after = udp_snmp(nsx, lab.ns(TARGET))
    dev_after = device_drops(nsx, lab.namespaces)
    # the sniffer's control: marker frames the peer really sends are seen on the TAP
    inject(nsx, lab.ns(PEER), ATK.tap, 5, GENUINE)
    wait_for(lambda: lab.stats(TARGET, ATK)["tap_tx_frames"] - after[TARGET]["tap_tx_frames"] >= 5,
             10)
    marked = sniffer.stop()

    # no crash: the same two processes, still the daemon, still running
    for h, proc in procs.items():
        assert proc.poll() is None, lab.log(h, ATK)
        assert proc.pid == pids[h]
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            assert b"violin.daemon" in fh.read()
        assert "Traceback" not in lab.log(h, ATK)

    # every packet left the attacker
    assert sent == len(packets), f"the attacker's socket refused packets: {spoofer.errors}"

    # nothing of the attacker's reached the TAP (the sniffer saw the control frames and nothing
    # else of the marker ethertype), and only what the peer sent did
    bad = [f for f in marked if GENUINE not in f]
    assert bad == [], f"{len(bad)} attacker frame(s) delivered to the TAP: {bad[0][:80]!r}"
    assert len(marked) == 5
    t0, t1 = before[TARGET], after[TARGET]
    delivered = t1["tap_tx_frames"] - t0["tap_tx_frames"]
    assert tap_after - tap_before == delivered
    assert delivered <= after[PEER]["tx_datagrams"] - before[PEER]["tx_datagrams"]

    # every datagram the daemon read was delivered or dropped under its reason, and each reason
    # got no more than the attacker sent of it (the peer's own datagrams are never dropped)
    drops = drops_between(t0, t1)
    assert t1["rx_datagrams"] - t0["rx_datagrams"] == delivered + sum(drops.values())
    assert set(drops) <= set(expected), (drops, expected)
    assert all(drops[r] <= expected[r] for r in drops), (drops, expected)
    # what the daemon did not read, the kernel dropped before it and counted: the target's
    # UDP receive queue, IP reassembly, or a full device queue on the way
    lost = COUNT - sum(drops.values())
    kernel = (snmp_after["Udp.RcvbufErrors"] - snmp_before["Udp.RcvbufErrors"]
              + snmp_after["Ip.ReasmFails"] - snmp_before["Ip.ReasmFails"]
              + dev_after - dev_before)
    print(f"\n{COUNT} hostile datagrams ({len(packets)} packets) in {took:.2f} s; daemon drops "
          f"{dict(drops)}; not read by the daemon {lost}; kernel drops {kernel}; "
          f"{delivered} real frames delivered")
    assert lost <= kernel
    if lost == 0:
        assert drops == expected

    # the stream flowed while the attack ran and arrived whole
    assert during["tap_tx_frames"] > start["tap_tx_frames"]
    assert client.returncode == 0, client_err
    assert server.returncode == 0, server_err
    got, want = server_out.split(), client_out.split()
    assert got[:2] == want[:2] and int(want[0]) > 0
