"""The compute-node image: Debian minbase + slurmd + munge, booted under UML by a peer account."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import group_alive, netns_ping, run_play

pytestmark = [pytest.mark.root, pytest.mark.slow]

# slurm.conf for a node whose controller is not there: slurmd still starts and listens on 6818.
SLURM_CONF = """ClusterName=vvmtest
SlurmctldHost=vvmctl(10.202.1.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
MaxNodeCount=16
SlurmdSpoolDir=/var/spool/slurmd
"""


def debugfs(image: str, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, image], capture_output=True,
                          text=True).stdout + ""


def test_node_image_has_no_shared_secrets_and_has_uml_modules(node_image):
    ls = subprocess.run(["debugfs", "-R", "ls -l /etc/munge", node_image], capture_output=True,
                        text=True).stdout
    assert "munge.key" not in ls, "package scripts' random munge key must not ship in the image"
    mods = subprocess.run(["debugfs", "-R", "ls /lib/modules", node_image], capture_output=True,
                          text=True).stdout
    uml = sorted(os.listdir("/usr/lib/uml/modules"))[-1]
    assert uml in mods, "the UML kernel's modules (NFS client) belong in the image"
    assert oct(os.stat(node_image).st_mode & 0o777) == "0o444"


def test_node_vm_boots_sets_identity_and_starts_slurmd(lender, node_image, vm_task):
    a = lender["vvma"]
    cfg = a.home / "cfg-node1"
    cfg.mkdir(mode=0o700)
    (cfg / "munge.key").write_bytes(os.urandom(1024))
    (cfg / "slurm.conf").write_text(SLURM_CONF)
    (cfg / "node.env").write_text("hosts=vvmpeer:10.202.1.99\n")
    for p in (cfg, *cfg.iterdir()):
        os.chown(p, a.uid, a.gid)
    os.chmod(cfg / "munge.key", 0o400)
    task = vm_task("node1", a, node_image, memory="256M", address="10.202.1.50/24",
                   hostname="vvmnode1", config_dir=str(cfg), ready_probe="tcp", ready_port=6818,
                   ready_timeout=300, kernel_args=["vc_feat=borrowed"])
    r = run_play([task])
    t = r.task("node1")
    try:
        assert not t["failed"], t["msg"]
        assert netns_ping("10.202.1.50")
        console = Path(t["res"]["console"]).read_text(errors="replace")
        assert "VIOCLUSTER-NET-UP ip=10.202.1.50/24 name=vvmnode1" in console
        assert "VIOCLUSTER-SLURMD-STARTED" in console
        assert "ERROR" not in "\n".join(l for l in console.splitlines() if "VIOCLUSTER" in l)
        assert t["res"]["cow_allocated_bytes"] < 1024 * 1024
    finally:
        k = run_play([{"name": "k", "cow_vm": {"name": "node1", "user": a.name,
                                               "state": "absent", "remove_cow": True}}])
    assert k.task("k")["changed"]
    assert not group_alive(t["res"]["pid"])
