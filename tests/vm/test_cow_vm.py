"""cow_vm through ansible-playbook: real UML VMs of peer accounts on real TAPs in a namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import NETNS, group_alive, netns_ping, run_play

pytestmark = [pytest.mark.root, pytest.mark.slow]


def proc_uid(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def test_boot_ping_idempotent_check_mode_kill(lender, busybox_image, vm_task):
    a = lender["vvma"]
    boot = vm_task("bb1", a, busybox_image, address="10.202.1.10/24")
    r = run_play([boot])
    t = r.task("bb1")
    assert not t["failed"], t["msg"] + r.stdout[-3000:]
    assert t["changed"]
    pid = t["res"]["pid"]
    try:
        assert proc_uid(pid) == a.uid, "the VM must run as the peer account, not root"
        assert netns_ping("10.202.1.10")
        assert t["res"]["boot_seconds"] > 0
        assert 0 < t["res"]["cow_allocated_bytes"] < 1024 * 1024
        assert Path(a.home, ".uml", "bb1").is_dir()

        # Second run, then check mode of the same: nothing changes, same process.
        again = run_play([vm_task("bb1", a, busybox_image, address="10.202.1.10/24")])
        assert not again.task("bb1")["changed"], again.task("bb1")["res"]
        assert again.task("bb1")["res"]["pid"] == pid
        chk = run_play([vm_task("bb1", a, busybox_image, address="10.202.1.10/24")], check=True)
        assert not chk.task("bb1")["changed"]

        # Check mode of a change (memory) and of absent: reported, not done.
        chk = run_play([vm_task("bb1", a, busybox_image, address="10.202.1.10/24", memory="80M"),
                        {"name": "kill", "cow_vm": {"name": "bb1", "user": a.name,
                                                    "state": "absent"}}],
                       check=True, diff=True)
        assert chk.task("bb1")["changed"] and chk.task("kill")["changed"]
        assert "80M" in json.dumps(chk.task("bb1")["res"].get("diff", {}))
        assert group_alive(pid) and netns_ping("10.202.1.10")
    finally:
        kill = run_play([{"name": "kill", "cow_vm": {"name": "bb1", "user": a.name,
                                                     "state": "absent", "remove_cow": True}}])
    k = kill.task("kill")
    assert k["changed"] and not k["failed"], k["msg"]
    assert k["res"]["kill_seconds"] < 5
    assert not group_alive(pid), "every process of the VM's group must be gone"
    assert not Path(a.home, ".uml", "bb1").exists(), "~/.uml/UMID must be cleaned up"
    assert not (a.vms / "bb1.cow").exists()
    assert not netns_ping("10.202.1.10")
    again = run_play([{"name": "kill", "cow_vm": {"name": "bb1", "user": a.name,
                                                  "state": "absent"}}])
    assert not again.task("kill")["changed"]


def test_check_mode_running_starts_nothing(lender, busybox_image, vm_task):
    a = lender["vvma"]
    r = run_play([vm_task("bbcheck", a, busybox_image, address="10.202.1.11/24")], check=True)
    t = r.task("bbcheck")
    assert t["changed"] and not t["failed"], t["msg"]
    assert t["res"]["pid"] == 0
    assert not (a.vms / "bbcheck.cow").exists()
    assert not netns_ping("10.202.1.11")


def test_peer_account_runs_its_own_vm_over_config_dir(lender, busybox_image, vm_task):
    """The broker's path: the module runs AS the peer account (no root), identity from hostfs."""
    b = lender["vvmb"]
    cfg = b.home / "cfg-bbself"
    cfg.mkdir(mode=0o700)
    (cfg / "node.env").write_text("ip=10.202.2.20/24\nname=selfnode\n")
    for p in (cfg, cfg / "node.env"):
        os.chown(p, b.uid, b.gid)
    task = vm_task("bbself", b, busybox_image, config_dir=str(cfg), ready_probe="console")
    task["cow_vm"].pop("user")
    r = run_play([task], as_user=b.name)
    t = r.task("bbself")
    try:
        assert not t["failed"], t["msg"] + r.stdout[-2000:]
        assert proc_uid(t["res"]["pid"]) == b.uid
        assert netns_ping("10.202.2.20"), "address from node.env in the config directory"
        console = Path(t["res"]["console"]).read_text(errors="replace")
        assert "name=selfnode" in console
    finally:
        k = run_play([{"name": "kill", "cow_vm": {"name": "bbself", "state": "absent",
                                                  "remove_cow": True}}], as_user=b.name)
    assert k.task("kill")["changed"] and not k.task("kill")["failed"], k.task("kill")["msg"]
    assert not group_alive(t["res"]["pid"])


def test_two_peer_domains_cannot_touch_each_other(lender, busybox_image, vm_task):
    a, b = lender["vvma"], lender["vvmb"]
    r = run_play([vm_task("isoa", a, busybox_image, address="10.202.1.30/24"),
                  vm_task("isob", b, busybox_image, address="10.202.2.30/24"),
                  # a's VM on b's TAP, a's VM on b's COW, b's VM on a's config dir
                  vm_task("steal-tap", a, busybox_image, tap=b.tap, task="steal-tap"),
                  vm_task("steal-cow", a, busybox_image, cow=str(b.vms / "isob.cow"),
                          task="steal-cow")])
    ta, tb = r.task("isoa"), r.task("isob")
    try:
        assert not ta["failed"] and not tb["failed"], ta["msg"] + tb["msg"]
        assert netns_ping("10.202.1.30") and netns_ping("10.202.2.30")
        st = r.task("steal-tap")
        assert st["failed"] and "owned by vvmb" in st["msg"], st["msg"]
        sc = r.task("steal-cow")
        assert sc["failed"] and "not to vvma" in sc["msg"], sc["msg"]
        # The operating system agrees: a cannot read b's COW nor attach to b's TAP.
        read = subprocess.run(["setpriv", f"--reuid={a.uid}", f"--regid={a.gid}", "--init-groups",
                               "head", "-c", "1", str(b.vms / "isob.cow")], capture_output=True)
        assert read.returncode != 0
        # Each peer's kill touches only its own VM.
        k = run_play([{"name": "kill-a", "cow_vm": {"name": "isob", "user": a.name,
                                                    "state": "absent"}}])
        assert not k.task("kill-a")["changed"]
        assert group_alive(tb["res"]["pid"])
    finally:
        run_play([{"name": "ka", "cow_vm": {"name": "isoa", "user": a.name, "state": "absent",
                                            "remove_cow": True}},
                  {"name": "kb", "cow_vm": {"name": "isob", "user": b.name, "state": "absent",
                                            "remove_cow": True}}])
    assert not group_alive(ta["res"]["pid"]) and not group_alive(tb["res"]["pid"])


def test_clear_failures_change_nothing(lender, busybox_image, vm_task, tmp_path):
    a = lender["vvma"]
    # A base copied without its mtime: a COW made on the original no longer fits it.
    moved = a.home / "moved-base.img"
    shutil.copyfile(busybox_image, moved)
    os.chmod(moved, 0o444)
    stale = a.vms / "stale.cow"
    made = run_play([{"name": "cow", "cow_image": {"path": str(stale), "base_image": str(moved),
                                                   "owner": a.name}}])
    assert made.task("cow")["changed"], made.task("cow")["msg"]
    os.utime(moved, (1, 1))
    r = run_play([
        vm_task("nobase", a, "/nonexistent/base.img", task="missing base"),
        vm_task("stale", a, str(moved), task="changed base"),
        vm_task("notap", a, busybox_image, tap="vvmnotap0", task="missing tap"),
        vm_task("badmac", a, busybox_image, mac="zz:00", task="bad mac"),
        vm_task("badaddr", a, busybox_image, address="10.202.1.40", task="address without prefix"),
        vm_task("badmem", a, busybox_image, memory="lots", task="bad memory"),
        vm_task("bad name!", a, busybox_image, task="bad name"),
        vm_task("slow", a, busybox_image, address="10.202.1.41/24", ready_probe="tcp",
                ready_port=6818, ready_timeout=4, task="not ready in time"),
    ])
    expect = {
        "missing base": "base image /nonexistent/base.img is missing",
        "changed base": "mtime changed",
        "missing tap": "TAP vvmnotap0 does not exist",
        "bad mac": "is not like",
        "address without prefix": "needs a prefix length",
        "bad memory": "is not a size",
        "bad name": "letters, digits",
        "not ready in time": "not ready (tcp) within 4 s",
    }
    for task, text in expect.items():
        t = r.task(task)
        assert t["failed"], f"{task} should fail"
        assert text in t["msg"], f"{task}: {t['msg']}"
        assert "Traceback" not in t["msg"]
    slow = r.task("not ready in time")["msg"]
    assert "VIOCLUSTER-READY" in slow, "the console's last lines are part of the message"
    # Nothing was left running or half-made.
    assert not (a.vms / "nobase.cow").exists() and not (a.vms / "notap.cow").exists()
    assert stale.exists(), "a failed check must not delete the COW"
    assert not Path(a.home, ".uml", "slow").exists()
    assert not netns_ping("10.202.1.41")
    assert live_vm_processes(a.name) == [], "no VM of vvma may be left running"


def live_vm_processes(user: str, settle: float = 10.0) -> list[str]:
    """The user's ``linux`` processes that are not zombies, once the host has had ``settle``
    seconds to reap what a kill left (this machine's PID 1 reaps orphans lazily)."""
    deadline = time.monotonic() + settle
    while True:
        ps = subprocess.run(["ps", "-u", user, "-o", "pid=,stat=,comm="],
                            capture_output=True, text=True)
        live = [line.split()[0] for line in ps.stdout.splitlines()
                if line.split()[2:] == ["linux"] and not line.split()[1].startswith("Z")]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.2)


def test_limits_file_caps_vms(lender, busybox_image, vm_task, tmp_path):
    a = lender["vvma"]
    limits = tmp_path / "vvma.limits"
    limits.write_text("max_vms=1\nmax_memory_mb=100\n")
    r = run_play([vm_task("lim1", a, busybox_image, limits_file=str(limits), ready_probe="console"),
                  vm_task("lim2", a, busybox_image, limits_file=str(limits), ready_probe="console"),
                  ])
    try:
        assert not r.task("lim1")["failed"], r.task("lim1")["msg"]
        t2 = r.task("lim2")
        assert t2["failed"] and "the limit is 1" in t2["msg"], t2["msg"]
        limits.write_text("max_memory_mb=100\n")
        r2 = run_play([vm_task("lim2", a, busybox_image, limits_file=str(limits))])
        assert r2.task("lim2")["failed"] and "limit is 100 MB" in r2.task("lim2")["msg"]
        limits.write_text("max_vms = lots\n")
        r3 = run_play([vm_task("lim2", a, busybox_image, limits_file=str(limits))])
        assert r3.task("lim2")["failed"] and "expected max_vms=N" in r3.task("lim2")["msg"]
    finally:
        run_play([{"name": "k", "cow_vm": {"name": "lim1", "user": a.name, "state": "absent",
                                           "remove_cow": True}}])
    assert not (a.vms / "lim2.cow").exists()


def test_qemu_tcg_boots_the_same_image(lender, busybox_image, vm_task):
    """The second hypervisor: QEMU (TCG here) on a qcow2 overlay, same TAP rules and kill."""
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86 missing: run scripts/bootstrap.sh")
    from conftest import build
    boot = build("qemu-boot")
    a = lender["vvma"]
    task = vm_task("qbb", a, busybox_image, hypervisor="qemu", cow=str(a.vms / "qbb.qcow2"),
                   memory="128M", address="10.202.1.60/24", kernel=boot["kernel"],
                   initrd=boot["initrd"], ready_timeout=120)
    r = run_play([task])
    t = r.task("qbb")
    try:
        assert not t["failed"], t["msg"]
        assert t["res"]["accel"] in ("tcg", "kvm")
        assert proc_uid(t["res"]["pid"]) == a.uid
        assert netns_ping("10.202.1.60")
        assert not run_play([task]).task("qbb")["changed"]
    finally:
        k = run_play([{"name": "k", "cow_vm": {"name": "qbb", "user": a.name, "state": "absent",
                                               "remove_cow": True}}])
    assert k.task("k")["changed"] and not group_alive(t["res"]["pid"])
    assert not (a.vms / "qbb.qcow2").exists()
