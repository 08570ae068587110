"""viocluster-vms (roles/lending_host/files): the lender broker's list and fast kill of peer VMs.

A real UML VM (busybox image) booted by cow_vm as a peer account; the tool runs as root with a
limits directory that names the test's peer accounts, as the lending_host role writes it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import group_alive, run_play

TOOL = Path(__file__).resolve().parents[2] / "roles" / "lending_host" / "files" / "viocluster-vms"


def _tool(limits: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOOL), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "VIOCLUSTER_PEER_LIMITS": str(limits)})


def test_lists_and_kills_a_peer_vm_and_a_missing_vm_is_not_an_error(lender, busybox_image, vm_task,
                                                                      tmp_path):
    a, b = lender["vvma"], lender["vvmb"]
    limits = tmp_path / "peers"
    limits.mkdir()
    for peer in (a, b):
        (limits / f"{peer.name}.limits").write_text("max_vms=1\nmax_memory_mb=256\n")
    r = run_play([vm_task("vt1", a, busybox_image, address="10.202.1.30/24")])
    t = r.task("vt1")
    assert not t["failed"], t["msg"] + r.stdout[-3000:]
    pid = t["res"]["pid"]
    try:
        listed = _tool(limits, "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == ["vt1"]

        started = time.monotonic()
        killed = _tool(limits, "kill", "vt1")
        took = time.monotonic() - started
        assert killed.returncode == 0 and killed.stdout.strip() == "vt1 killed", killed
        assert not group_alive(pid), "every process of the VM's group must be gone"
        print(f"viocluster-vms kill: {took:.3f} s")
        assert _tool(limits, "list").stdout.split() == []
        again = _tool(limits, "kill", "vt1")
        assert again.returncode == 0 and "does not run here" in again.stdout
        bad = _tool(limits, "kill")
        assert bad.returncode == 2 and "usage" in bad.stderr
    finally:
        run_play([{"name": "kill", "cow_vm": {"name": "vt1", "user": a.name, "state": "absent",
                                              "remove_cow": True}}])
