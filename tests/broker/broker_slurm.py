"""A real single-host Slurm 22.05 (munged + slurmctld + slurmd) inside a network namespace.

Everything lives in a temporary directory (configs, key, spool, logs, sockets); daemons are
started here and ended by PID; the namespace is removed at the end. Nothing touches the
machine's own /etc/slurm, /etc/munge or /run/munge.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_CONF = """\
ClusterName={name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.socket,cred_expire=10
CryptoType=crypto/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MaxNodeCount=16
TreeWidth=65533
ReturnToService=1
JobRequeue=1
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
MinJobAge=60
KillWait=2
InactiveLimit=0
Waittime=0
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0
StateSaveLocation={dir}/ctld
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port=17101 CPUs=1 RealMemory=500 State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port=17102 CPUs=1 RealMemory=500 State=UNKNOWN
NodeSet=loanset Feature=borrowed
PartitionName=main Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
PartitionName=loan Nodes=loanset MaxTime=INFINITE State=UP
"""


class ClusterError(RuntimeError):
    pass


@dataclass
class SlurmCluster:
    """munged + slurmctld + slurmd n1, n2 in netns ``ns``; ``run`` executes Slurm commands there."""

    ns: str
    dir: Path
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.dir / "slurm.conf")}

    @property
    def prefix(self) -> list[str]:
        # nsenter, not ``ip netns exec``: the latter remounts /sys, hiding the cgroup
        # hierarchy slurmd needs.
        return ["nsenter", f"--net=/run/netns/{self.ns}", "--"]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        env = dict(os.environ, **self.env)
        proc = subprocess.run(
            [*self.prefix, *args], env=env, capture_output=True, text=True, timeout=timeout,
            cwd=self.dir,  # what a job or slurmstepd writes by default lands here, not in the checkout
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def spawn(self, key: str, *args: str) -> int:
        env = dict(os.environ, **self.env)
        log = open(self.dir / "log" / f"{key}.stdout", "ab")
        proc = subprocess.Popen(
            [*self.prefix, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir,
        )
        log.close()
        self.pids[key] = proc.pid
        return proc.pid

    def stop(self, key: str) -> None:
        pid = self.pids.pop(key, None)
        if pid is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            for _ in range(50):
                try:
                    if os.waitpid(pid, os.WNOHANG) != (0, 0):
                        break
                except ChildProcessError:
                    break
                time.sleep(0.1)
            else:
                continue
            break

    def start_dynamic_node(self, name: str, features: str = "borrowed") -> int:
        """A further slurmd (-Z, dynamic) that stands in for a borrowed VM's node daemon.

        It listens on SlurmdPort (a dynamic node cannot be given its own port), so one runs
        at a time per cluster.
        """
        return self.spawn(
            f"slurmd-{name}", "slurmd", "-D", "-Z", "-N", name,
            "--conf", f"CPUs=1 RealMemory=200 Feature={features}",
        )

    def wait(self, what: str, check, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except ClusterError:
                pass
            time.sleep(0.2)
        raise ClusterError(f"timed out waiting for {what}; logs in {self.dir / 'log'}")

    def node_state(self, name: str) -> str:
        out = self.run("sinfo", "-h", "-N", "-n", name, "-o", "%T", check=False)
        return out.split()[0] if out.split() else ""

    def job_state(self, job: str) -> str:
        return self.run("squeue", "-h", "-j", job, "-o", "%T", check=False).strip()


def start(prefix: str = "vbk", name: str = "slurm") -> SlurmCluster:
    for tool in ("munged", "slurmctld", "slurmd", "squeue", "ip"):
        if shutil.which(tool) is None:
            raise ClusterError(f"{tool} not installed (packaging/apt-packages.txt lists it)")
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-{name}-"))
    base.chmod(0o755)
    ns = f"{prefix}-{name}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    cluster = SlurmCluster(ns=ns, dir=base)
    try:
        subprocess.run([*cluster.prefix, "ip", "link", "set", "lo", "up"], check=True)
        # Slurm resolves its listening address with AI_ADDRCONFIG, which finds nothing in a
        # namespace that has only a loopback: give it a veth pair (both ends inside) with an
        # address.
        for cmd in (
            ["ip", "link", "add", "vbkv0", "type", "veth", "peer", "name", "vbkv1"],
            ["ip", "addr", "add", "10.204.250.1/24", "dev", "vbkv0"],
            ["ip", "link", "set", "vbkv0", "up"],
            ["ip", "link", "set", "vbkv1", "up"],
        ):
            subprocess.run([*cluster.prefix, *cmd], check=True)
        for sub in ("ctld", "spool", "log"):
            (base / sub).mkdir()
        host = socket.gethostname()
        (base / "slurm.conf").write_text(SLURM_CONF.format(host=host, dir=base, name=name.replace('-', '')[:30]))
        key = base / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        cluster.spawn(
            "munged", "munged", "-F", "--force", f"--socket={base}/munge.socket",
            f"--key-file={key}", f"--pid-file={base}/munged.pid",
            f"--log-file={base}/log/munged.log", f"--seed-file={base}/munged.seed",
        )
        cluster.wait("munged socket", lambda: (base / "munge.socket").exists(), 10)
        cluster.spawn("slurmctld", "slurmctld", "-D", "-c")
        cluster.wait("slurmctld", lambda: "UP" in cluster.run("scontrol", "ping"), 30)
        for node in ("n1", "n2"):
            cluster.spawn(f"slurmd-{node}", "slurmd", "-D", "-N", node)
        cluster.wait(
            "n1, n2 idle",
            lambda: all(cluster.node_state(n) == "idle" for n in ("n1", "n2")),
            60,
        )
    except BaseException:
        stop(cluster)
        raise
    return cluster


def stop(cluster: SlurmCluster) -> None:
    """End every daemon started here (slurmd first, munged last) and remove the namespace."""
    order = sorted(cluster.pids, key=lambda k: (k == "munged", k == "slurmctld", k))
    for key in order:
        cluster.stop(key)
    subprocess.run(["ip", "netns", "del", cluster.ns], check=False)
    if not os.environ.get("VBK_KEEP_SLURM"):
        shutil.rmtree(cluster.dir, ignore_errors=True)


def reset(cluster) -> None:
    """Cancel every job, resume drained nodes, delete dynamic ones."""
    cluster.run("scancel", "--full", "-u", "root", check=False)
    for node in ("n1", "n2"):
        if cluster.node_state(node) not in ("idle", "allocated", "mixed"):
            cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
    cluster.wait("empty queue", lambda: not cluster.run("squeue", "-h").strip(), 30)
