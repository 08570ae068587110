"""The lab's fault tools: a host's power cut and return, two domains cut apart, a pulled cable.

The decisions (which host, which router rules, which port) are checked on the lab's plan
without root; the test marked ``lab`` and ``faults`` makes every fault on a real lab.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker import cli as maincli
from broker.lab import cli as labcli
from broker.lab import faults
from broker.lab import hosts as labhosts
from broker.lab import topology
from broker.lab.rootfs import ensure_rootfs

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventories" / "lab"


@pytest.fixture(scope="module")
def lab_inventory() -> dict:
    exe = Path(sys.executable).parent / "ansible-inventory"
    out = subprocess.run([str(exe), "-i", str(INVENTORY), "--list"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.fixture
def plan(lab_inventory: dict, tmp_path: Path) -> labhosts.Plan:
    plan = topology.plan_from_inventory(lab_inventory, rootfs="/nonexistent")
    plan.state_dir = str(tmp_path)  # never the lab's own state
    return plan


# ---------------------------------------------------------------------------------------------
# decisions, no root


def test_partition_is_one_blackhole_rule_each_way_in_the_router(plan: labhosts.Plan) -> None:
    rules = faults.partition_rules(plan, "b", "a")
    assert rules == faults.partition_rules(plan, "a", "b")
    assert [(r.netns, r.source, r.destination) for r in rules] == [
        (topology.ROUTER_NETNS, "10.203.1.0/24", "10.203.2.0/24"),
        (topology.ROUTER_NETNS, "10.203.2.0/24", "10.203.1.0/24"),
    ]
    assert rules[0].selector() == ["from", "10.203.1.0/24", "to", "10.203.2.0/24",
                                   "priority", str(faults.RULE_PRIORITY)]
    assert faults.active_rules(plan) == []
    plan.partitions.append(faults.partition_pair(plan, "b", "a"))
    assert faults.active_rules(plan) == rules


@pytest.mark.parametrize(("first", "second", "message"), [
    ("a", "c", "no lab domain 'c'; the lab's domains are a, b"),
    ("a", "a", "cannot be partitioned from itself (a)"),
])
def test_partition_names_a_wrong_domain(plan: labhosts.Plan, first: str, second: str,
                                        message: str) -> None:
    with pytest.raises(faults.FaultError, match=message.replace("(", r"\(").replace(")", r"\)")):
        faults.partition_rules(plan, first, second)


def test_a_host_is_found_by_name_and_its_cable_is_its_bridge_port(plan: labhosts.Plan) -> None:
    host = faults.find_host(plan, "a-node2")
    assert faults.host_port(plan, host) == (topology.ROUTER_NETNS, host.port)
    with pytest.raises(faults.FaultError,
                       match="no lab host 'c-node1'; the lab's hosts are a-head"):
        faults.find_host(plan, "c-node1")


def test_host_state_tells_a_crash_from_a_stop(plan: labhosts.Plan) -> None:
    host = plan.hosts[0]
    assert faults.host_state(host, running=True) == "running"
    assert faults.host_state(host, running=False) == "stopped"
    host.crashed = True
    assert faults.host_state(host, running=False) == "crashed"


def test_the_state_file_keeps_faults_and_reads_an_older_one(plan: labhosts.Plan) -> None:
    plan.partitions.append(("a", "b"))
    plan.cut.append("a-node1")
    plan.hosts[1].crashed = True
    plan.hosts[1].cgroup = "/sys/fs/cgroup/unified/viocluster-lab/vlab-a-node1"
    plan.save()
    again = labhosts.Plan.load(plan.state_dir)
    assert again == plan
    raw = json.loads(plan.state_file.read_text())
    for key in ("partitions", "cut"):
        del raw[key]
    for host in raw["hosts"]:
        del host["cgroup"], host["crashed"]
    for bridge in raw["bridges"]:
        del bridge["domain"]
    plan.state_file.write_text(json.dumps(raw))
    old = labhosts.Plan.load(plan.state_dir)
    assert old is not None and old.partitions == [] and old.cut == []
    with pytest.raises(faults.FaultError, match="brought up by an older version"):
        faults.partition_rules(old, "a", "b")


def _lab_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = maincli.main(["lab", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_fault_commands_say_in_one_line_what_is_wrong(
        plan: labhosts.Plan, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(labcli, "_need_root", lambda: None)
    monkeypatch.setattr(topology, "STATE_DIR", Path(plan.state_dir) / "absent")
    for args in (["crash", "a-head"], ["start", "a-head"], ["partition", "a", "b"], ["heal"],
                 ["cut", "a-head"]):
        code, text = _lab_cli(args, capsys)
        assert (code, text) == (2, "viocluster: error: the lab is not up; "
                                   "`viocluster lab up` first\n"), args
    plan.save()
    monkeypatch.setattr(topology, "STATE_DIR", Path(plan.state_dir))
    for args, message in (
        (["crash", "z-head"], "no lab host 'z-head'; the lab's hosts are a-head, a-node1"),
        (["start", "z-head"], "no lab host 'z-head'"),
        (["cut", "z-head"], "no lab host 'z-head'"),
        (["partition", "a", "z"], "no lab domain 'z'; the lab's domains are a, b"),
        (["partition", "b", "b"], "cannot be partitioned from itself (b)"),
        # its nspawn is not running: the plan's hosts were never booted
        (["crash", "a-head"], "host a-head is not running; `viocluster lab start a-head`"),
    ):
        code, text = _lab_cli(args, capsys)
        assert code == 2 and text.startswith("viocluster: error: ") and message in text, text
        assert text.count("\n") == 1 and "Traceback" not in text, text


# ---------------------------------------------------------------------------------------------
# on a real lab


def ssh(plan: labhosts.Plan, host: str, command: str,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    target = faults.find_host(plan, host)
    return subprocess.run(
        ["ssh", "-i", str(plan.key_file), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
         "-o", "ConnectTimeout=3", f"root@{target.ip}", command],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )


def ok(plan: labhosts.Plan, host: str, command: str) -> str:
    proc = ssh(plan, host, command)
    assert proc.returncode == 0, f"{host}: `{command}` failed: {proc.stderr or proc.stdout}"
    return proc.stdout


def pings(plan: labhosts.Plan, source: str, target: str) -> bool:
    address = faults.find_host(plan, target).ip
    return ssh(plan, source, f"ping -c 2 -W 1 -i 0.3 {address}").returncode == 0


def gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # nspawn is our own child (lab up ran in this process)
    except ChildProcessError:
        pass
    return not labhosts._alive(pid)


def current() -> labhosts.Plan:
    plan = labhosts.Plan.load(topology.STATE_DIR)
    assert plan is not None
    return plan


@pytest.fixture(scope="module")
def live_lab(as_root: None):
    if labhosts.Plan.load(topology.STATE_DIR) is not None:
        pytest.fail(f"a lab is already up (state in {topology.STATE_DIR}); `viocluster lab down`")
    ensure_rootfs()
    saved = None
    try:
        labcli.up(INVENTORY)
        saved = current()
        yield saved
    finally:
        started = time.monotonic()
        labcli.down()  # fails, naming it, when something is left
        print(f"\nlab down {time.monotonic() - started:.1f} s")
        if saved is not None:
            assert labhosts.leftovers(saved) == []  # also each host's cgroups


@pytest.mark.lab
@pytest.mark.faults
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crash_start_partition_cut_heal_on_the_lab(
        live_lab: labhosts.Plan, capsys: pytest.CaptureFixture[str]) -> None:
    plan = live_lab
    victim = faults.find_host(plan, "b-node1")
    assert victim.cgroup, "lab hosts run in a cgroup of their own where cgroup v2 is mounted"
    # a marker on its persistent layer, and a unit enabled in it that leaves a mark in /run
    ok(plan, victim.name,
       "echo kept > /root/fault-marker && printf '%s\\n' '[Service]' 'Type=oneshot' "
       "'ExecStart=/usr/bin/touch /run/fault-probe' '[Install]' 'WantedBy=multi-user.target' "
       "> /etc/systemd/system/fault-probe.service && systemctl enable --quiet fault-probe")
    pids = labhosts.cgroup_pids(victim.cgroup)
    assert victim.pid in pids and len(pids) > 3, pids  # nspawn, its init, sshd, journald...

    # crash: every process gone at once, the network namespace and port left, SSH fails
    started = time.monotonic()
    code, text = _lab_cli(["crash", victim.name], capsys)
    crash_s = time.monotonic() - started
    assert code == 0, text
    assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]
    assert not any(path.exists() for path in labhosts.host_cgroups(victim.cgroup))
    assert labhosts.netns_exists(victim.machine)
    assert labhosts.link_exists(victim.port, topology.ROUTER_NETNS)
    after = current()
    assert faults.find_host(after, victim.name).crashed
    assert faults.find_host(after, victim.name).pid is None
    assert ssh(plan, victim.name, "true").returncode != 0
    assert not pings(plan, "b-head", victim.name)
    code, text = _lab_cli(["status"], capsys)
    assert code == 0 and f"{victim.name:12} {victim.ip:15} crashed" in text, text
    code, text = _lab_cli(["crash", victim.name], capsys)
    assert code == 2 and "is not running" in text, text

    # start: the same host, its state kept, systemd running, the enabled unit run at boot
    started = time.monotonic()
    code, text = _lab_cli(["start", victim.name], capsys)
    start_s = time.monotonic() - started
    assert code == 0, text
    after = current()
    back = faults.find_host(after, victim.name)
    assert not back.crashed and back.pid and back.pid not in pids
    assert labhosts.host_running(back) and back.pid in labhosts.cgroup_pids(back.cgroup)
    state = ok(plan, victim.name, "systemctl is-system-running --wait").strip()
    assert state in ("running", "degraded"), state
    assert ok(plan, victim.name, "cat /root/fault-marker").strip() == "kept"
    ok(plan, victim.name, "test -e /run/fault-probe")
    assert pings(plan, "b-head", victim.name)
    code, text = _lab_cli(["start", victim.name], capsys)
    assert code == 2 and "is running" in text, text

    # partition: a's head reaches its own node, not b's head; heal: it does again
    assert pings(plan, "a-head", "b-head")
    code, text = _lab_cli(["partition", "a", "b"], capsys)
    assert code == 0, text
    assert not pings(plan, "a-head", "b-head")
    assert not pings(plan, "b-node2", "a-node1")
    assert pings(plan, "a-head", "a-node1")
    assert pings(plan, "b-head", "b-node1")
    code, text = _lab_cli(["status"], capsys)
    assert "partition    a | b" in text, text
    code, text = _lab_cli(["heal"], capsys)
    assert code == 0 and "partition a | b" in text, text
    assert faults.installed_rules(topology.ROUTER_NETNS) == []
    assert pings(plan, "a-head", "b-head")

    # cut: a host off its network, running on; heal plugs it back in
    code, text = _lab_cli(["cut", "a-node2"], capsys)
    assert code == 0, text
    assert not pings(plan, "a-head", "a-node2")
    assert labhosts.host_running(faults.find_host(current(), "a-node2"))
    code, text = _lab_cli(["status"], capsys)
    assert "(cut off)" in text, text
    _lab_cli(["heal"], capsys)
    assert pings(plan, "a-head", "a-node2")

    # down after a crash and a partition removes everything (checked by the fixture)
    _lab_cli(["crash", "a-node1"], capsys)
    _lab_cli(["partition", "b", "a"], capsys)
    print(f"\ncrash {crash_s:.2f} s, start (to SSH) {start_s:.1f} s")
