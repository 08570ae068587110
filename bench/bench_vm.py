#!/usr/bin/env python3
"""COW VM benchmark: the compute-node image under UML and under QEMU, median of N runs.

Per run, from the moment the hypervisor is launched (as an unprivileged account, on a TAP it
owns, in a network namespace made here):
  ping     first ICMP echo reply from the guest's address
  slurmd   slurmd's port 6818 accepting TCP. The config directory carries a munge key and a
           slurm.conf whose controller does not exist: slurmd starts, listens, and keeps trying
           to register, so this is "node daemon listening", not "node idle in a controller"
  kill     SIGKILL to the process group until no process of it is left
  cow      bytes the COW file occupies on disk after the boot (it is sparse)

UML boots the image directly (ubd0=COW,BASE). QEMU boots it with -kernel/-initrd made from
Debian's linux-image-amd64 (images/build_image.py build qemu-boot) on a qcow2 overlay; the
accelerator is KVM only where it really runs, else TCG.

Run as root:  python bench/bench_vm.py [--runs 5] [--hypervisors uml,qemu]
Needs the images (built on first use, cached under /var/cache/viocluster/images).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from broker.lab.devnode import rerun_with_private_tun

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "module_utils"))
import viocluster_vm as vmu  # noqa: E402

NETNS = "vvmbench"
USER = "vvmbench"
TAP = "vvmbtap0"
HOST_ADDR = "10.202.200.1/24"
GUEST_ADDR = "10.202.200.2"
CACHE = Path(os.environ.get("VIOCLUSTER_IMAGE_CACHE", "/var/cache/viocluster/images"))
SLURM_CONF = """ClusterName=vvmbench
SlurmctldHost=vvmctl(10.202.200.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
MaxNodeCount=16
SlurmdSpoolDir=/var/spool/slurmd
"""


@dataclass
class Run:
    ping: float
    slurmd: float
    kill: float
    cow: int


@dataclass
class Result:
    hypervisor: str
    accel: str | None
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def build(kind: str) -> dict:
    out = sh(sys.executable, str(REPO / "images" / "build_image.py"), "build", kind,
             "--cache", str(CACHE)).stdout
    return json.loads(out)


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)


def setup() -> vmu.Account:
    if sh("id", USER, check=False).returncode != 0:
        sh("useradd", "--create-home", "--shell", "/usr/sbin/nologin", USER)
    sh("ip", "netns", "del", NETNS, check=False)
    sh("ip", "netns", "add", NETNS)
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")
    sh("ip", "-n", NETNS, "tuntap", "add", "dev", TAP, "mode", "tap", "user", USER)
    sh("ip", "-n", NETNS, "addr", "add", HOST_ADDR, "dev", TAP)
    sh("ip", "-n", NETNS, "link", "set", TAP, "up")
    return vmu.Account.lookup(USER)


def teardown() -> None:
    sh("ip", "netns", "del", NETNS, check=False)
    sh("userdel", "-r", USER, check=False)


def poll(fn, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if fn():
            return time.monotonic()
        time.sleep(0.005)
    return None


def one_run(hv: str, acct: vmu.Account, work: Path, node: dict, boot: dict | None,
            accel: str, timeout: float) -> Run:
    cfg = work / "config"
    cow = work / ("vm.cow" if hv == "uml" else "vm.qcow2")
    for p in (cow, Path(str(cow) + ".base")):
        p.unlink(missing_ok=True)
    if hv == "uml":
        vmu.write_uml_cow(str(cow), node["image"])
    else:
        vmu.create_qcow2(str(cow), node["image"])
    for p in (cow, Path(str(cow) + ".base")):
        if p.exists():
            os.chown(p, acct.uid, acct.gid)
    spec = vmu.VMSpec(name="vvmbvm", hypervisor=hv, base_image=node["image"], cow=str(cow),
                      memory="256M", tap=TAP, address=f"{GUEST_ADDR}/24", hostname="vvmbvm",
                      config_dir=str(cfg), kernel=boot and boot["kernel"],
                      initrd=boot and boot["initrd"], accel=accel)
    uml_dir = Path(acct.home) / ".uml"
    shutil.rmtree(uml_dir / "vvmbvm", ignore_errors=True)
    cmd = (vmu.uml_command(spec, str(uml_dir), str(work / "empty")) if hv == "uml"
           else vmu.qemu_command(spec))
    console = work / "console"
    console.write_text("")
    os.chown(console, acct.uid, acct.gid)
    if hv == "uml":
        vmu.reset_tap_offloads(TAP)  # QEMU's offloads outlive it on the TAP
    t0 = time.monotonic()
    pid = vmu.spawn_detached(cmd, acct, str(console), acct.home)
    try:
        t_ping = poll(lambda: vmu.ping_once(GUEST_ADDR, 0.05), timeout)
        t_slurmd = poll(lambda: vmu.tcp_once(GUEST_ADDR, 6818, 0.2), timeout)
        if t_ping is None or t_slurmd is None:
            raise RuntimeError(f"{hv}: not up in {timeout} s; console:\n"
                               + vmu.console_tail(str(console), 25))
        cow_bytes = vmu.allocated_bytes(str(cow))
    finally:
        t_kill = vmu.kill_group(pid)
        shutil.rmtree(uml_dir / "vvmbvm", ignore_errors=True)
    return Run(t_ping - t0, t_slurmd - t0, t_kill, cow_bytes)


def main() -> int:
    ap = argparse.ArgumentParser(description="COW VM boot/kill benchmark (compute-node image)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hypervisors", default="uml,qemu")
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_vm: run as root (network namespace, TAP, peer account)", file=sys.stderr)
        return 2
    # The peer account attaches to its TAP through a 0666 /dev/net/tun, as on a lending host;
    # this machine's own node keeps its mode.
    rc = rerun_with_private_tun([sys.executable, *sys.argv])
    if rc is not None:
        return rc
    hvs = [h for h in args.hypervisors.split(",") if h]
    print("building/reusing images ...", flush=True)
    node = build("node")
    boot = build("qemu-boot") if "qemu" in hvs else None
    accel = "kvm" if vmu.kvm_usable() else "tcg"
    acct = setup()
    work = Path(tempfile.mkdtemp(prefix="vvmbench-", dir="/tmp"))
    results: list[Result] = []
    try:
        os.chmod(work, 0o755)
        cfg = work / "config"
        cfg.mkdir(mode=0o700)
        (cfg / "munge.key").write_bytes(os.urandom(1024))
        (cfg / "slurm.conf").write_text(SLURM_CONF)
        (work / "empty").mkdir(mode=0o700)
        for p in (work, cfg, work / "empty", *cfg.iterdir()):
            os.chown(p, acct.uid, acct.gid)
        enter_netns(NETNS)
        for hv in hvs:
            res = Result(hv, accel if hv == "qemu" else None)
            for i in range(args.runs):
                try:
                    r = one_run(hv, acct, work, node, boot, accel, args.timeout)
                except RuntimeError as exc:
                    print(f"  {hv} run {i + 1}: FAILED: {exc}", flush=True)
                    continue
                res.runs.append(r)
                print(f"  {hv} run {i + 1}: ping {r.ping:.2f} s, slurmd:6818 {r.slurmd:.2f} s, "
                      f"kill {r.kill * 1000:.1f} ms, COW {r.cow / 1024:.0f} KiB", flush=True)
            if res.runs:
                results.append(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        teardown()
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nCOW VM benchmark, compute-node image (node-{node['key']}), median of the runs "
          f"that came up ({args.runs} tried per hypervisor)")
    print(f"load average (1/5/15 min) at the end: {' '.join(load)}; "
          f"uptime: {sh('uptime').stdout.strip()}")
    print(f"{'hypervisor':<12}{'boot->ping':>12}{'boot->6818':>12}{'kill':>10}{'COW alloc':>12}")
    for res in results:
        name = f"{res.hypervisor}" + (f"[{len(res.runs)}]" if len(res.runs) != args.runs else "")
        name = name + (f" ({res.accel})" if res.accel else "")
        print(f"{name:<12}{res.median('ping'):>10.2f} s{res.median('slurmd'):>10.2f} s"
              f"{res.median('kill') * 1000:>7.1f} ms{res.median('cow') / 1024:>8.0f} KiB")
    print("boot->6818: slurmd listening on its port (slurm.conf from the config directory, "
          "controller absent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
