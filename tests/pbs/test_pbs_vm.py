"""The VM image of a PBS domain: a real UML VM booted from the pbs-node image (the domain's own
OpenPBS build), its MoM pointed at the live test server by the kernel command line alone,
admitted as a borrowed node, a job run on it, the node removed (the job requeued), the VM
killed.

The VM runs as an unprivileged account (``nobody``) on a TAP that root made on the test
domain's bridge, under a private 0666 ``/dev/net/tun`` (this machine's node keeps its mode).
The server reaches the MoM by address: the node is created with ``Mom=<address>``, as
``borrow.yml`` creates a PBS domain's borrowed node, so the VM's name needs no entry on the
server's host.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import pbs_domain
from broker.lab.devnode import PrivateTun
from broker.lab.pbs_build import build_for
from broker.scheduler.command import CommandRunner
from broker.scheduler.pbs import PbsAdapter

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "module_utils"))
from viocluster_vm import VMSpec, uml_command, write_uml_cow  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.slow]

CACHE = Path("/var/cache/viocluster/images")
TAP = "pbst-vmt"
NAME = "vm2"
ADDRESS = f"{pbs_domain.SUBNET}.21"
BORROWED = ("-l", "select=1:ncpus=1:borrowed=True", "-l", "place=excl")


@pytest.fixture(scope="module")
def pbs_image(pbs) -> dict:
    for tool in ("linux", "debootstrap", "mkfs.ext4"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing: run scripts/bootstrap.sh (packaging/apt-packages.txt)")
    archive = build_for().archive
    proc = subprocess.run(
        ["nice", "-n", "19", sys.executable, str(REPO / "images" / "build_image.py"), "build",
         "pbs-node", "--cache", str(CACHE), "--pbs-archive", str(archive)],
        text=True, capture_output=True, timeout=1800, check=False)
    if proc.returncode != 0:
        pytest.fail(f"building the pbs-node image failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


@pytest.fixture
def vm(pbs, pbs_image):
    """Boot the VM; yield its console file; kill its process group and remove the TAP."""
    nobody = pwd.getpwnam("nobody")
    # where the VM's account can reach (pytest's temporary directories are root's alone)
    work = Path(tempfile.mkdtemp(prefix="pbst-vm-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    cfg = work / "config"
    cfg.mkdir()
    # the account the domain's jobs run as (PBS runs no job as root)
    (cfg / "passwd").write_text(
        f"{pbs_domain.USER}:x:{pbs_domain.UID}:{pbs_domain.UID}::/tmp:/bin/sh\n")
    (cfg / "group").write_text(f"{pbs_domain.USER}:x:{pbs_domain.UID}:\n")
    cow = work / f"{NAME}.cow"
    write_uml_cow(str(cow), pbs_image["image"])
    (work / "uml").mkdir()
    (work / "empty").mkdir()
    for p in (work, cfg, *work.iterdir(), *cfg.iterdir()):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    os.chmod(cfg, 0o700)
    subprocess.run(["ip", "link", "del", TAP], capture_output=True, check=False)
    subprocess.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "user", str(nobody.pw_uid)],
                   check=True)
    subprocess.run(["ip", "link", "set", TAP, "master", pbs_domain.BRIDGE, "up"], check=True)
    spec = VMSpec(name=NAME, hypervisor="uml", base_image=pbs_image["image"], cow=str(cow),
                  memory="384M", tap=TAP, address=f"{ADDRESS}/24", hostname=NAME,
                  config_dir=str(cfg),
                  kernel_args=[f"vc_ctl=head:{pbs_domain.SUBNET}.11", "vc_sched=pbs"])
    console = work / "console.log"
    proc = None
    try:
        with PrivateTun() as tun, open(console, "wb") as out:
            proc = subprocess.Popen(
                [*tun.prefix, "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                 "--clear-groups", "--", *uml_command(spec, str(work / "uml"), str(work / "empty"))],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "HOME": str(work)}, cwd=work, start_new_session=True)
            yield console
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        subprocess.run(["ip", "link", "del", TAP], capture_output=True, check=False)
        pbs.run("qmgr", "-c", f"delete node {NAME}", check=False)
        shutil.rmtree(work, ignore_errors=True)


def _console_has(console: Path, marker: str) -> bool:
    return marker in console.read_text(errors="replace")


def test_pbs_node_image_boots_a_mom_of_the_domain_build_that_runs_a_job_and_is_reclaimed(
    pbs, vm, clean_queue
):
    adapter = PbsAdapter(CommandRunner(tuple(pbs.prefix()), pbs.env, timeout=30))
    t0 = time.monotonic()
    pbs.wait("the VM's MoM started", lambda: _console_has(vm, "VIOCLUSTER-PBS-MOM-STARTED"),
             timeout=120)
    boot_s = time.monotonic() - t0
    text = vm.read_text(errors="replace")
    assert f"VIOCLUSTER-NET-UP ip={ADDRESS}/24 name={NAME}" in text
    assert "server=head" in text
    assert "ERROR" not in "\n".join(l for l in text.splitlines() if "VIOCLUSTER-" in l), text
    # the node as borrow.yml creates it: marked borrowed, its MoM reached by address
    pbs.run("qmgr", "-c", f"create node {NAME} Mom={ADDRESS},resources_available.borrowed=True")
    node = adapter.admit(NAME, timeout=90)
    join_s = time.monotonic() - t0
    assert node.joined and "borrowed" in node.features
    assert [n.name for n in adapter.snapshot().borrowed] == [NAME]

    job = pbs.submit(*BORROWED, "--", "/bin/sleep", "300")
    pbs.wait("the job running on the VM", lambda: pbs.job(job).get("job_state") == "R"
             and pbs.job(job).get("exec_host", "").startswith(f"{NAME}/"), timeout=60)

    result = adapter.remove(NAME, reason="pbst-reclaim", timeout=60)
    assert result.requeued == (job,)
    assert adapter.snapshot().node(NAME) is None
    assert pbs.job(job).get("job_state") == "Q"
    assert int(pbs.job(job).get("run_count", 0)) == 1
    print(f"\npbs-node VM: MoM started {boot_s:.1f} s after launch, node joined at {join_s:.1f} s")
