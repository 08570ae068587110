"""Fencing in the node image: a VM cut off from its controller kills its jobs and powers off.

Real UML VMs of the node image, booted by cow_vm as a peer account in the lending namespace.
There is no slurmctld here: the controller is the lending namespace's own address on the peer's
TAP, which answers the ICMP echo the guest's watchdog (images/node/viocluster-watchdog, PID 1)
sends every second; the test names say so. The "job" is a shell loop that appends a numbered
line with the guest's uptime to a file on a share every 0.2 s, started beside the image's init
by a test wrapper (init=/bin/sh, the loop's text base64 in a kernel argument, then exec
/sbin/viocluster-init). The share is the VM's config directory through hostfs, which writes
through to the host at once: the host sees every line the job wrote, and nothing more can come
once the VM's processes are gone.

The NFS tests play the lab's corruption: the job keeps its output open on the domain's NFS
share (nfs-ganesha on the same address, see NfsServer) with lines still in the guest's page
cache; during the cut the domain's "requeued copy" writes the file anew on the server. Fenced,
the VM powers off and the server's file stays exactly the requeued copy's; the control, with a
window longer than the cut, shows the live VM's NFS client writing its pages over it after the
heal.

Cut: the peer's TAP is set down in the lending namespace (set up again after). docs/broker.md
"Fencing" gives the bound the fence must meet: with SlurmdTimeout=30 the scheduler declares a
silent node dead 20 s after a cut at the earliest.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import NETNS, group_alive, run_play

pytestmark = [pytest.mark.root, pytest.mark.slow]

# The earliest the scheduler requeues after a cut, SlurmdTimeout=30 (docs/broker.md "Fencing").
SCHEDULER_EARLIEST_S = 20

JOB = """sleep 3
mount -t hostfs -o / none /srv || echo "VIOCLUSTER-TEST-ERROR no hostfs share"
echo VIOCLUSTER-TEST-JOB-STARTED
i=0
while :; do
  i=$((i + 1))
  read -r up _ < /proc/uptime
  echo "$i $up" >> /srv/job.out
  sleep 0.2
done
"""

SLURM_CONF = """ClusterName=vvmfence
SlurmctldHost=vvmctl({ctl})
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
MaxNodeCount=16
SlurmdSpoolDir=/var/spool/slurmd
{extra}"""


def _config_dir(peer, name: str, ctl: str, extra: str = "") -> Path:
    cfg = peer.home / f"cfg-{name}"
    cfg.mkdir(mode=0o700)
    (cfg / "munge.key").write_bytes(os.urandom(1024))
    (cfg / "slurm.conf").write_text(SLURM_CONF.format(ctl=ctl, extra=extra))
    for p in (cfg, *cfg.iterdir()):
        os.chown(p, peer.uid, peer.gid)
    os.chmod(cfg / "munge.key", 0o400)
    return cfg


def _boot(vm_task, peer, image: str, name: str, address: str, ctl: str, cfg: Path,
          fence: int, job_text: str = JOB, extra: tuple[str, ...] = ()) -> dict:
    job = base64.b64encode(job_text.encode()).decode()
    task = vm_task(name, peer, image, memory="256M", address=address, hostname=name,
                   config_dir=str(cfg), init="/bin/sh", ready_probe="console", ready_timeout=300,
                   # the kernel gives words without "=" to init as arguments, others as its
                   # environment; no word may hold a space (cow_vm) or a dot (module parameter)
                   kernel_args=["-c", "echo${IFS}$vcjob|base64${IFS}-d|sh&exec${IFS}/sbin/viocluster-init",
                                f"vcjob={job}", f"vc_ctl=vvmctl:{ctl}", f"vc_fence={fence}",
                                *extra])
    t = run_play([task]).task(name)
    assert not t["failed"], t["msg"]
    return t["res"]


def _kill(peer, name: str) -> None:
    run_play([{"name": "k", "cow_vm": {"name": name, "user": peer.name, "state": "absent",
                                       "remove_cow": True}}])


def _wait(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _lines(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().split(b"\n"):
        parts = line.split()
        if len(parts) == 2:
            out.append((int(parts[0]), float(parts[1])))
    return out


def _uptime(console: str, marker: str) -> float:
    m = re.search(re.escape(marker) + r".*uptime=([0-9.]+)", console)
    assert m, f"no {marker!r} on the console:\n{console[-3000:]}"
    return float(m.group(1))


def test_vm_cut_off_from_its_controller_address_kills_its_job_and_powers_off(lender, node_image,
                                                                              vm_task):
    a = lender["vvma"]
    ctl = a.host_address.split("/")[0]
    fence = 6
    cfg = _config_dir(a, "fence1", ctl, "SlurmdTimeout=30\n")
    res = _boot(vm_task, a, node_image, "fence1", "10.202.1.61/24", ctl, cfg, fence)
    pid, console_path = res["pid"], Path(res["console"])
    out = cfg / "job.out"
    cut = False
    try:
        _wait("the watchdog armed and the job writing",
              lambda: "VIOCLUSTER-FENCE-ARMED" in console_path.read_text(errors="replace")
              and len(_lines(out)) >= 5, 120)
        subprocess.run(["ip", "-n", NETNS, "link", "set", a.tap, "down"], check=True)
        t_cut = time.monotonic()
        cut = True
        _wait("the VM's processes gone", lambda: not group_alive(pid), fence + 60)
        t_gone = time.monotonic()
        written = out.read_bytes()
        # The network heals: nothing of the VM can write any more.
        subprocess.run(["ip", "-n", NETNS, "link", "set", a.tap, "up"], check=True)
        cut = False
        time.sleep(3)
        assert out.read_bytes() == written, "the share changed after the VM was gone"
        console = console_path.read_text(errors="replace")
        fenced = _uptime(console, "VIOCLUSTER-FENCE no answer from the controller")
        armed = _uptime(console, "VIOCLUSTER-FENCE-ARMED")
        lines = _lines(out)
        assert lines and b"\0" not in written
        # The job was killed at the fence: its last line is from before the fence, and it
        # wrote up to about the cut (lines every 0.2 s; none missing).
        assert [n for n, _ in lines] == list(range(1, len(lines) + 1))
        assert lines[-1][1] <= fenced + 0.05, (lines[-1], fenced)
        assert lines[-1][1] >= fenced - fence - 2, (lines[-1], fenced)
        assert fenced - armed >= fence
        # Correctness bound, not speed: gone before the scheduler could run the job elsewhere.
        assert t_gone - t_cut < SCHEDULER_EARLIEST_S, (
            f"the VM took {t_gone - t_cut:.1f}s to fence itself:\n{console[-3000:]}")
        assert "killing every process and powering off without sync" in console
        assert "reboot(2) failed" not in console, "the power-off must be reboot(2), no fallback"
        print(f"fence window {fence}s: VM gone {t_gone - t_cut:.1f}s after the cut; the job's "
              f"last line {fenced - lines[-1][1]:.2f}s before the fence line; the console ends:\n"
              + "\n".join(console.splitlines()[-4:]))
    finally:
        if cut:
            subprocess.run(["ip", "-n", NETNS, "link", "set", a.tap, "up"], check=False)
        _kill(a, "fence1")
    assert not group_alive(pid)


def test_vm_whose_controller_address_answers_keeps_running_its_job(lender, node_image, vm_task):
    b = lender["vvmb"]
    ctl = b.host_address.split("/")[0]
    # A window longer than this slurm.conf allows is cut down to what it allows (and said):
    # 21 - max(21/3, 5) - 5 = 9 s.
    cfg = _config_dir(b, "fence2", ctl, "SlurmdTimeout=21\nMessageTimeout=5\n")
    res = _boot(vm_task, b, node_image, "fence2", "10.202.2.61/24", ctl, cfg, 30)
    pid, console_path = res["pid"], Path(res["console"])
    out = cfg / "job.out"
    try:
        _wait("the watchdog armed and the job writing",
              lambda: "VIOCLUSTER-FENCE-ARMED" in console_path.read_text(errors="replace")
              and len(_lines(out)) >= 5, 120)
        _wait("the window cut down to what SlurmdTimeout allows",
              lambda: "fence window 30s too long for SlurmdTimeout=21 MessageTimeout=5 "
              "(at most 9 s): using 9s" in console_path.read_text(errors="replace"), 30)
        before = len(_lines(out))
        time.sleep(2.5 * 9)
        console = console_path.read_text(errors="replace")
        assert group_alive(pid), f"the VM stopped:\n{console[-3000:]}"
        assert "VIOCLUSTER-FENCE no answer" not in console
        assert "killing every process" not in console
        assert len(_lines(out)) > before + 50, "the job stopped writing"
    finally:
        _kill(b, "fence2")
    assert not group_alive(pid)


# ---------------------------------------------------------------------------------- over NFS
# The lab's head nodes serve the domain's /home with nfs-ganesha (roles/nfs); this machine's
# kernel has no NFS server. The server here is ganesha.nfsd, this machine's or the one in the
# lab's cached root filesystem (run in a chroot on a throw-away overlay of it: the cache is not
# touched), in a private mount namespace inside the lending namespace, on the peer's TAP
# address, exporting a directory of the test as /export (NFSv4.1 only, no rpcbind).
GANESHA_CONF = """NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = 2049;
    Bind_addr = {addr};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;
    Lease_Lifetime = 10;
    Only_Numeric_Owners = true;
    RecoveryBackend = fs;
    RecoveryRoot = /tmp/ganesha-recovery;
}}
MDCACHE {{
    Dir_Chunk = 0;
}}
EXPORT {{
    Export_Id = 1;
    Path = /export;
    Pseudo = /export;
    Access_Type = RW;
    Squash = no_root_squash;
    SecType = sys;
    Protocols = 4;
    Transports = TCP;
    FSAL {{
        Name = VFS;
    }}
}}
LOG {{
    Default_Log_Level = EVENT;
}}
"""


def _ganesha_root() -> Path | None:
    if Path("/usr/bin/ganesha.nfsd").exists():
        return Path("/")
    for root in sorted(Path("/var/cache/viocluster").glob("rootfs-*/")):
        if (root / "usr/bin/ganesha.nfsd").exists():
            return root
    return None


class NfsServer:
    def __init__(self, addr: str, export: Path):
        self.addr, self.export = addr, export
        self.work = Path(tempfile.mkdtemp(prefix="vvmnfs-", dir="/var/tmp"))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        root = _ganesha_root()
        if root is None:
            pytest.skip("no ganesha.nfsd here nor in a lab root filesystem "
                        "(install nfs-ganesha nfs-ganesha-vfs)")
        w = self.work
        for d in ("upper", "work", "merged"):
            (w / d).mkdir()
        (w / "ganesha.conf").write_text(GANESHA_CONF.format(addr=self.addr))
        script = (
            'set -e; w="$1"; root="$2"; exp="$3"; m="$w/merged"\n'
            'mount -t overlay overlay -o "lowerdir=$root,upperdir=$w/upper,workdir=$w/work" "$m"\n'
            'mkdir -p "$m/export" "$m/tmp/ganesha-recovery" "$m/run/ganesha"\n'
            'mount --bind "$exp" "$m/export"; mount --rbind /dev "$m/dev"\n'
            'mount -t proc proc "$m/proc"; cp "$w/ganesha.conf" "$m/ganesha.conf"\n'
            'exec chroot "$m" /usr/bin/ganesha.nfsd -F -L /dev/stdout -f /ganesha.conf '
            '-p /run/ganesha/ganesha.pid\n')
        log = open(w / "ganesha.log", "wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", script, "sh", str(w), str(root), str(self.export)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _wait("ganesha listening on 2049", lambda: self.proc.poll() is not None or subprocess.run(
            ["ip", "netns", "exec", NETNS, "ss", "-Htln", "sport", "= :2049"],
            capture_output=True, text=True).stdout.strip(), 60)
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return (self.work / "ganesha.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)


# The job keeps its output open and appends every 0.2 s: the lines sit in the guest's page cache
# as dirty NFS pages until writeback sends them (up to 30 s later), as a real job's output does.
JOB_NFS = """until grep -qs " /srv nfs4 " /proc/mounts; do sleep 1; done
echo VIOCLUSTER-TEST-JOB-STARTED
exec 3>> /srv/job.out
i=0
while :; do
  i=$((i + 1))
  read -r up _ < /proc/uptime
  echo "$i $up" >&3
  sleep 0.2
done
"""

REQUEUED = b"".join(b"requeued copy, line %d\n" % i for i in range(1, 201))


def _nfs_partition(lender, node_image, vm_task, name: str, address: str, fence: int,
                   extra_conf: str, cut_s: float | None) -> tuple[bytes, str, bool]:
    """Boot a VM whose job writes over NFS, cut the TAP, let the domain's "requeued copy"
    rewrite the output on the server, heal after cut_s (None: once the VM is gone), wait, and
    return the server's file, the console and whether the VM was still running."""
    a = lender["vvma"]
    ctl = a.host_address.split("/")[0]
    export = Path(tempfile.mkdtemp(prefix="vvmexport-", dir="/var/tmp"))
    os.chmod(export, 0o777)
    server = NfsServer(ctl, export)
    cfg = _config_dir(a, name, ctl, extra_conf)
    cut = False
    pid = None
    try:
        server.start()
        res = _boot(vm_task, a, node_image, name, address, ctl, cfg, fence, JOB_NFS,
                    (f"vc_nfs={ctl}:/export:/srv",))
        pid, console_path = res["pid"], Path(res["console"])
        _wait("the watchdog armed, the share mounted and the job writing",
              lambda: all(m in console_path.read_text(errors="replace")
                          for m in ("VIOCLUSTER-FENCE-ARMED", "VIOCLUSTER-NFS-UP /srv",
                                    "VIOCLUSTER-TEST-JOB-STARTED")), 120)
        time.sleep(3)  # a few seconds of output in the guest's page cache
        before = (export / "job.out").read_bytes() if (export / "job.out").exists() else b""
        print(f"{name}: {len(before)} bytes of the VM's output on the server before the cut")
        subprocess.run(["ip", "-n", NETNS, "link", "set", a.tap, "down"], check=True)
        cut = True
        t_cut = time.monotonic()
        # The domain runs the job again elsewhere: its output file is written anew.
        with open(export / "job.out", "r+b" if (export / "job.out").exists() else "wb") as f:
            f.truncate(0)
            f.write(REQUEUED)
        if cut_s is None:
            _wait("the VM's processes gone", lambda: not group_alive(pid), fence + 60)
        else:
            time.sleep(max(0.0, t_cut + cut_s - time.monotonic()))
        subprocess.run(["ip", "-n", NETNS, "link", "set", a.tap, "up"], check=True)
        cut = False
        # Long enough for a live VM's NFS client to reconnect and write back (RPC
        # retransmission, then writeback of pages dirty for up to 30 s).
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and (export / "job.out").read_bytes() == REQUEUED:
            time.sleep(0.5)
        alive = bool(group_alive(pid))
        return (export / "job.out").read_bytes(), console_path.read_text(errors="replace"), alive
    finally:
        if cut:
            subprocess.run(["ip", "-n", NETNS, "link", "set", a.tap, "up"], check=False)
        _kill(a, name)
        server.stop()
        shutil.rmtree(export, ignore_errors=True)


def test_fenced_vm_writes_nothing_late_over_nfs_controller_address_stand_in(lender, node_image,
                                                                           vm_task):
    """The lab's corruption, fenced: the requeued copy's output on the NFS server stays whole."""
    data, console, alive = _nfs_partition(lender, node_image, vm_task, "fence3", "10.202.1.63/24",
                                          6, "SlurmdTimeout=30\n", None)
    assert not alive
    assert "killing every process and powering off without sync" in console
    assert data == REQUEUED, (f"the fenced VM wrote late over the requeued copy's output: "
                              f"{data[:200]!r} ... ({len(data)} bytes)")


def test_unfenced_vm_writes_late_over_nfs_controller_address_stand_in(lender, node_image, vm_task):
    """The control: with a window longer than the cut the VM lives on, and after the heal its
    NFS client writes its pages over the requeued copy's output (what fencing prevents)."""
    data, console, alive = _nfs_partition(lender, node_image, vm_task, "fence4", "10.202.1.64/24",
                                          100, "", 15)
    assert alive, console[-3000:]
    assert "VIOCLUSTER-FENCE no answer" not in console
    assert data != REQUEUED, "the live VM's late write never reached the server"
    nuls = data.count(bytes(1))
    print(f"after the heal: {nuls} NUL bytes, {len(data)} bytes, starting {data[:120]!r}")
