"""``viocluster lab demo``: two lab domains trade a machine for real, and the demo tells how.

Steps: the lab up (kept if it is up already), ``playbooks/site.yml`` (brokers included), a
burst of jobs on domain A; broker A borrows a machine of B (a COW VM booted as B's peer
account, on A's virtual network, in A's scheduler) and A's jobs run on it. Then a burst on B: B
reclaims, the VM is killed, A's job on it is requeued and finishes on A's own nodes. The demo
watches through SSH (job states, the VM's process) and the brokers' contract logs, prints a
timeline and a summary, checks the outcome, and leaves the lab up (``viocluster lab down``).

A and B are the lab's domains ``a`` and ``b`` unless ``DemoSettings.borrower`` and ``lender``
name others; each runs Slurm or OpenPBS (its head node has ``/opt/pbs``), and the demo speaks
to each in its own commands (:class:`Slurm`, :class:`Pbs`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from broker.errors import UserError
from broker.lab import hosts as labhosts
from broker.lab import topology
from broker.lab.playrun import run_playbook
from broker.lab.timeline import Event, JobRun, build_report, format_summary, format_timeline, parse_job_output

REPO = Path(__file__).resolve().parents[2]
BROKER_CLI = "/opt/viocluster/broker/bin/viocluster"
BROKER_CONFIG = "/etc/viocluster-broker/broker.yml"
TARGETS = {"agreed_to_idle_s": 10.0, "reclaim_to_requeued_s": 3.0, "reclaim_to_vm_gone_s": 3.0}
JOB_SCRIPT = """#!/bin/sh
# A job of the VioCluster demo: says where it runs, works a while, says where it finished.
echo "start $(hostname) $(date +%s.%N)"
sleep {seconds}
echo "done $(hostname) $(date +%s.%N)"
"""


class DemoError(UserError):
    """The demo could not run, or the trade did not happen as it should; the message says why."""


@dataclass(frozen=True)
class DemoSettings:
    inventory: Path
    out: Path
    jobs_a: int = 8
    jobs_b: int = 3
    job_seconds: int = 15
    phase_timeout_s: float = 180.0
    run_site: bool = True  # False: the lab's hosts are configured already (benchmark rounds)
    borrower: str = "a"  # the lab domain that bursts first and borrows ("A")
    lender: str = "b"  # the lab domain that lends and then reclaims ("B")


class Slurm:
    """The demo's commands for a Slurm domain."""

    kind = "slurm"

    @staticmethod
    def submit(count: int, rundir: str, name: str, out_prefix: str, borrowed_ok: bool) -> str:
        part = "phys,borrowed --open-mode=append" if borrowed_ok else "phys"
        return " && ".join([f"sbatch --parsable -p {part} -J {name} "
                            f"-o {rundir}/{out_prefix}-%j.out {rundir}/job.sh"] * count)

    @staticmethod
    def jobs() -> str:
        return "squeue -h -o '%i %T %N'"

    @staticmethod
    def parse_jobs(out: str) -> dict[str, tuple[str, str]]:
        """job -> (state, node) with RUNNING/COMPLETING for a running job."""
        seen = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                seen[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
        return seen

    cancel_all = "scancel --user=root || true"
    borrowed_nodes = "sinfo -h -N -p borrowed -o %N"
    queue_ids = "squeue -h -o %i"


class Pbs:
    """The demo's commands for an OpenPBS domain. Jobs run as root (the lab's server lists root
    in acl_roots) and append to their output file on the shared /home themselves: a MoM in a
    borrowed VM has no way to copy a job's output back to the server's host."""

    kind = "pbs"
    bin = "/opt/pbs/bin"

    @classmethod
    def submit(cls, count: int, rundir: str, name: str, out_prefix: str, borrowed_ok: bool) -> str:
        # PBS keeps every job on own nodes or borrowed ones only (placement sets), whichever
        # has room: Slurm's "phys,borrowed". A lender's burst (borrowed_ok False) asks the same:
        # a domain that lends has no borrowed node (own nodes carry no value to ask for).
        where = "select=1:ncpus=1"
        # a script file, not "-- /bin/sh -c ...": the submit arguments reappear in qstat's JSON
        wrapper = f"{rundir}/{out_prefix}-pbs.sh"
        text = shlex.quote(f"#!/bin/sh\nexec {rundir}/job.sh >> {rundir}/{out_prefix}-$PBS_JOBID.out 2>&1\n")
        # -R oe: the MoM removes the job's own stdout and stderr instead of copying them to
        # the submitting host (with scp or pbs_rcp, which the lab's hosts do not serve: the job
        # would stay "exiting" while the MoM retries)
        one = (f"{cls.bin}/qsub -N {name} -R oe -o /dev/null -e /dev/null -l {where} "
               f"-l place=excl {wrapper}")
        return (f"cd / && printf {text} > {wrapper} && chmod 755 {wrapper} && "
                + " && ".join([one] * count))

    @classmethod
    def jobs(cls) -> str:
        return f"{cls.bin}/qstat -f -F json"

    @staticmethod
    def parse_jobs(out: str) -> dict[str, tuple[str, str]]:
        try:
            data = json.loads(out) if out.strip() else {}
        except ValueError:
            raise DemoError("qstat -f -F json printed no JSON") from None
        seen = {}
        for job, raw in data.get("Jobs", {}).items():
            code = str(raw.get("job_state", ""))
            if code in ("F", "M", "X"):
                continue
            node = str(raw.get("exec_host", "")).split("/")[0] if code in ("R", "E") else ""
            seen[job] = ("RUNNING" if code in ("R", "E") else "PENDING", node)
        return seen

    cancel_all = f"ids=$({bin}/qselect); [ -z \"$ids\" ] || {bin}/qdel -W force $ids || true"
    borrowed_nodes = f"{bin}/pbsnodes -av | grep -B30 'resources_available.borrowed = True' | grep -v '^ ' | grep . || true"
    queue_ids = f"{bin}/qselect"


def scheduler_of(shell: "Shell", head: str) -> type[Slurm] | type[Pbs]:
    """The domain's scheduler, from what its head node runs."""
    found = shell.run(head, f"test -x {Pbs.bin}/qstat && echo pbs || echo slurm", timeout=20)
    return Pbs if found.strip() == "pbs" else Slurm


class Shell:
    """Commands on lab hosts over one persistent SSH connection each."""

    def __init__(self, plan: labhosts.Plan) -> None:
        self.addresses = {h.name: h.ip for h in plan.hosts}
        self.key = str(plan.key_file)
        self.control_dir = tempfile.mkdtemp(prefix="vlab-demo-ssh-")

    def _argv(self, host: str, command: str) -> list[str]:
        return ["ssh", "-i", self.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%h",
                "-o", "ControlPersist=120", f"root@{self.addresses[host]}", command]

    def run(self, host: str, command: str, check: bool = True, timeout: float = 60.0) -> str:
        try:
            proc = subprocess.run(self._argv(host, command), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise DemoError(f"{host}: `{command}` did not finish within {timeout:g} s") from None
        if check and proc.returncode != 0:
            raise DemoError(f"{host}: `{command}` failed (exit {proc.returncode}): "
                            f"{(proc.stderr or proc.stdout).strip()[-400:]}")
        return proc.stdout

    def close(self) -> None:
        for host, address in self.addresses.items():
            subprocess.run(["ssh", "-o", f"ControlPath={self.control_dir}/%h", "-O", "exit",
                            f"root@{address}"], capture_output=True, check=False)
        try:
            for entry in Path(self.control_dir).iterdir():
                entry.unlink()
            os.rmdir(self.control_dir)
        except OSError:
            pass


class Watcher:
    """Polls in the background and records what changes, with the time it was seen."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def note(self, who: str, what: str, at: float | None = None) -> None:
        with self.lock:
            self.events.append(Event(at if at is not None else time.time(), who, what))

    def every(self, period: float, probe: Callable[[], None]) -> None:
        def loop() -> None:
            while not self.stop.is_set():
                try:
                    probe()
                except DemoError:
                    pass  # a missed poll is retried; the phase timeouts catch a dead host
                self.stop.wait(period)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


class Queue:
    """Domain A's jobs as squeue shows them, and what became of each job."""

    def __init__(self, shell: Shell, head: str, watcher: Watcher, vm_prefix: str,
                 sched: type[Slurm] | type[Pbs] = Slurm) -> None:
        self.shell, self.head, self.watcher, self.vm_prefix = shell, head, watcher, vm_prefix
        self.sched = sched
        self.lock = threading.Lock()
        self.where: dict[str, str] = {}  # job -> node it runs on now ("" when pending)
        self.ran_on_vm_done: set[str] = set()
        self.requeued: dict[str, str] = {}  # job -> the VM it was taken off
        self.jobs: set[str] = set()

    def poll(self) -> None:
        out = self.shell.run(self.head, self.sched.jobs(), timeout=20)
        now = time.time()
        seen = {j: v for j, v in self.sched.parse_jobs(out).items() if j in self.jobs}
        with self.lock:
            for job in self.jobs:
                before = self.where.get(job)
                state, node = seen.get(job, ("GONE", ""))
                now_on = node if state in ("RUNNING", "COMPLETING") else ""
                if state == "GONE":
                    if before and before.startswith(self.vm_prefix):
                        self.ran_on_vm_done.add(job)
                    if before is not None and before != "done":
                        self.watcher.note("A", f"job {job} finished on {before or 'its node'}", now)
                    self.where[job] = "done"
                    continue
                if before == "done":
                    continue
                if now_on and now_on != before:
                    self.watcher.note("A", f"job {job} running on {now_on}", now)
                if before and before.startswith(self.vm_prefix) and now_on != before:
                    self.requeued[job] = before
                    self.watcher.note("A", f"job requeued: {job} taken off {before} ({state.lower()})", now)
                self.where[job] = now_on

    def snapshot(self) -> dict[str, str]:
        with self.lock:
            return dict(self.where)

    def snapshot_requeued(self) -> dict[str, str]:
        with self.lock:
            return dict(self.requeued)


def _log_step(log: Callable[[str], None], origin: float, text: str) -> None:
    log(f"[{time.time() - origin:7.2f} s] {text}")


def _wait(what: str, check: Callable[[], bool], timeout: float, period: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(period)


def _contracts(shell: Shell, head: str, all_: bool = True) -> list[dict]:
    flag = " --all" if all_ else ""
    out = shell.run(head, f"{BROKER_CLI} contracts --config {BROKER_CONFIG}{flag} --json", timeout=30)
    try:
        return json.loads(out)
    except ValueError as exc:
        raise DemoError(f"{head}: `viocluster contracts --json` gave no JSON ({exc})") from None


def _ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if not found:
        raise DemoError("ansible-playbook not found: run the demo with `make demo` (it sets up the "
                        "virtualenv) or from the project's virtualenv")
    return found


def run_site(inventory: Path, out: Path, log: Callable[[str], None],
             tty: TextIO | None = None) -> tuple[float, dict[str, int]]:
    """site.yml through ansible-runner, saying how far it is (``log``; a status line redrawn on
    ``tty`` when given) with its full output in out/site.log; returns the seconds it took and
    the hosts it changed something on (with the count)."""
    logfile = out / "site.log"
    bindir = str(Path(_ansible_playbook()).parent)
    env = {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    run = run_playbook(REPO / "playbooks" / "site.yml", inventory, logfile, show=log, tty=tty,
                       envvars=env, project_dir=REPO, name="site.yml")
    if not run.ok:
        why = [str(f) for f in run.failures] + run.errors
        if not why:
            text = logfile.read_text(errors="replace") if logfile.exists() else ""
            why = [f"the end of its output:\n{text[-2500:]}"]
        raise DemoError(f"site.yml failed ({run.status}, exit {run.rc}) after {run.seconds:.0f} s; "
                        f"its output is in {logfile}:\n  " + "\n  ".join(why))
    log(f"site.yml done in {run.seconds:.0f} s ({sum(run.changed.values())} changes; "
        f"output in {logfile})")
    return run.seconds, run.changed


def watch_vm_gone(shell: Shell, watcher: Watcher, host: str, account: str, vm: str,
                  side: str = "B") -> threading.Event:
    """Poll ``host`` every 0.1 s for the VM ``vm`` the lending ``account`` runs; the event is
    set (and the watcher notes it) once its process is gone."""
    gone = threading.Event()

    def probe() -> None:
        if gone.is_set():
            return
        out = shell.run(host, f"pgrep -u {account} -x linux -a || true", timeout=10)
        if f"umid={vm} " not in out + " ":
            gone.set()
            watcher.note(side, f"VM process gone: {vm} on {host}")

    watcher.every(0.1, probe)
    return gone


def reset(shell: Shell, heads: dict[str, str], timeout: float,
          scheds: dict[str, type[Slurm] | type[Pbs]] | None = None) -> None:
    """No job queued in any domain, no open contract, no borrowed node: a clean start."""
    scheds = scheds or {}
    for domain, head in heads.items():
        shell.run(head, scheds.get(domain, Slurm).cancel_all)

    def quiet() -> bool:
        for domain, head in heads.items():
            if _contracts(shell, head, all_=False):
                return False
            if shell.run(head, scheds.get(domain, Slurm).borrowed_nodes, check=False).strip():
                return False
        return True

    _wait("the brokers to close their open contracts and return borrowed nodes", quiet, timeout, 1.0)


def demo(settings: DemoSettings, log: Callable[[str], None] = print,
         live: bool | None = None, *, up: Callable[..., dict],
         build_wheels: Callable[[], None]) -> dict:
    """The trade, told through ``log``. ``live``: redraw a status line in place while site.yml
    runs (default: when ``log`` is print and the standard output a terminal). ``up`` and
    ``build_wheels`` are the lab command's own (``broker.lab.cli``), passed in."""
    if live is None:
        live = log is print and sys.stdout.isatty()

    if os.geteuid() != 0:
        raise DemoError("the demo needs root (the lab's namespaces and hosts); run it as root")
    origin = time.time()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    plan = labhosts.Plan.load(topology.STATE_DIR)
    if plan is None:
        _log_step(log, origin, "bringing the lab up")
        times = up(settings.inventory, log=lambda text: _log_step(log, origin, text))
        plan = labhosts.Plan.load(topology.STATE_DIR)
        assert plan is not None
        _log_step(log, origin, f"lab up: {len(plan.hosts)} hosts (root filesystem "
                               f"{'cached' if not times['rootfs'] else 'built in %.0f s' % times['rootfs']})")
    else:
        _log_step(log, origin, "the lab is up already: using it")
        if settings.run_site:
            _log_step(log, origin, "building the wheelhouses again (the sources may have changed)")
            build_wheels()
    site_s, site_changed = 0.0, {}
    if settings.run_site:
        _log_step(log, origin, "running playbooks/site.yml (virtual networks, Slurm, NFS, lending "
                               f"hosts, brokers); its full output goes to {out / 'site.log'}")
        site_s, site_changed = run_site(settings.inventory, out,
                                        lambda s: _log_step(log, origin, s),
                                        tty=sys.stdout if live else None)

    a, b = settings.borrower, settings.lender
    heads = {a: f"{a}-head", b: f"{b}-head"}
    missing = [h for h in heads.values() if h not in {x.name for x in plan.hosts}]
    if missing:
        raise DemoError(f"the lab has no {', '.join(missing)}: bring up a lab whose inventory has "
                        f"domains {a} and {b}")
    own_nodes = {h.name for h in plan.hosts if h.name.startswith(f"{a}-node")}
    shell = Shell(plan)
    watcher = Watcher()
    try:
        scheds = {d: scheduler_of(shell, head) for d, head in heads.items()}
        _log_step(log, origin, f"A is domain {a} ({scheds[a].kind}), B is domain {b} ({scheds[b].kind})")
        _log_step(log, origin, "making sure no job, contract or borrowed node is left from before")
        reset(shell, heads, settings.phase_timeout_s, scheds)
        run = time.strftime("%Y%m%d-%H%M%S")
        rundir = f"/home/viocluster-demo/{run}"
        for head in heads.values():
            script = shlex.quote(JOB_SCRIPT.format(seconds=settings.job_seconds))
            shell.run(head, f"mkdir -p {rundir} && printf '%s' {script} > {rundir}/job.sh "
                            f"&& chmod 755 {rundir}/job.sh")

        queue = Queue(shell, heads[a], watcher, vm_prefix=f"{a}-v", sched=scheds[a])
        burst_a = time.time()
        ids = shell.run(heads[a], scheds[a].submit(settings.jobs_a, rundir, f"demo-{a}", a,
                                                   borrowed_ok=True)).split()
        queue.jobs.update(ids)
        _log_step(log, origin, f"burst on A: {len(ids)} jobs of {settings.job_seconds} s on 2 nodes "
                               f"(jobs {ids[0]}..{ids[-1]}, output in {heads[a]}:{rundir})")
        watcher.every(0.25, queue.poll)

        def on_vm() -> list[str]:
            return [j for j, n in queue.snapshot().items() if n.startswith(queue.vm_prefix)]

        def on_vm_of_b() -> list[str]:
            """A's jobs on a VM borrowed from B: A may borrow from other peers too (a lab with
            three domains), and B's reclaim touches only B's VM."""
            jobs = on_vm()
            if not jobs:
                return []
            nodes = {n for c in _contracts(shell, heads[a], all_=False)
                     if c["role"] == "borrower" and c["state"] == "active" and c.get("peer") == b
                     for n in c["nodes"]}
            where = queue.snapshot()
            return [j for j in jobs if where.get(j) in nodes]

        first: list[str] = []

        def seen_on_vm_of_b() -> bool:
            first[:] = on_vm_of_b()
            return bool(first)

        _wait("a job of A running on a VM borrowed from B", seen_on_vm_of_b,
              settings.phase_timeout_s)
        _log_step(log, origin, f"A's job {first[0]} runs on the borrowed VM {queue.snapshot()[first[0]]}")
        a_now = [c for c in _contracts(shell, heads[a]) if c["state"] == "active" and c["role"] == "borrower"]
        if not a_now:
            raise DemoError("a job runs on a borrowed node but broker A has no active contract")
        # A may borrow from other peers too: the trade is the one with B, whose reclaim it watches
        contract = next((c for c in reversed(a_now) if c.get("peer") == b), a_now[-1])
        vm, host = contract["nodes"][0], contract["hosts"][0]
        with queue.lock:
            if queue.vm_prefix != vm:  # from now on only B's VM counts
                queue.vm_prefix = vm
                queue.ran_on_vm_done.clear()
        account = f"vcpeer{a}"  # the lending hosts' account of domain A (playbooks/site.yml)

        def vm_done_and_next() -> bool:
            remaining = [j for j, n in queue.snapshot().items() if n != "done"]
            return bool(queue.ran_on_vm_done) and (bool(on_vm()) or len(remaining) <= 1)

        _wait("a job to finish on the VM and the next to start there", vm_done_and_next,
              settings.phase_timeout_s)
        _log_step(log, origin, f"job(s) {', '.join(sorted(queue.ran_on_vm_done))} finished on {vm}; "
                               f"now on it: {', '.join(on_vm()) or 'nothing'}")

        gone = watch_vm_gone(shell, watcher, host, account, vm)
        burst_b = time.time()
        ids_b = shell.run(heads[b], scheds[b].submit(settings.jobs_b, rundir, f"demo-{b}", b,
                                                     borrowed_ok=False)).split()
        _log_step(log, origin, f"burst on B: {len(ids_b)} jobs; B needs its lent machine back")
        _wait(f"the VM {vm} to be killed on {host}", gone.is_set, settings.phase_timeout_s, 0.1)
        _log_step(log, origin, f"B reclaimed {host}: the VM {vm} is gone"
                               + (f"; A's job(s) {', '.join(sorted(queue.requeued))} requeued"
                                  if queue.requeued else ""))
        _wait("every job of A's burst to finish",
              lambda: all(n == "done" for n in queue.snapshot().values()) and len(queue.snapshot()) == len(ids),
              settings.phase_timeout_s * 2, 1.0)
        _log_step(log, origin, "every job of A's burst has finished")
        _wait("B's jobs to finish", lambda: not shell.run(heads[b], scheds[b].queue_ids).strip(),
              settings.phase_timeout_s, 1.0)
        watcher.close()

        jobs: list[JobRun] = []
        for job in ids:
            text = shell.run(heads[a], f"cat {rundir}/{a}-{job}.out", check=False)
            jobs.append(parse_job_output(job, text))
        report = build_report(burst_a=burst_a, burst_b=burst_b,
                              a_contracts=_contracts(shell, heads[a]),
                              b_contracts=_contracts(shell, heads[b]),
                              observations=watcher.events, jobs=jobs, own_nodes=own_nodes,
                              taken_off=queue.snapshot_requeued())
    finally:
        watcher.close()
        shell.close()

    timeline = format_timeline(report, burst_a)
    summary = format_summary(report, TARGETS)
    log("")
    log(f"Timeline (seconds after the burst on A):\n{timeline}")
    log("")
    log(f"Summary:\n{summary}")
    result = {
        "site_yml_s": site_s, "site_changed": site_changed, "run": run, "output_dir": f"{heads[a]}:{rundir}",
        "borrower": a, "lender": b, "schedulers": {d: s.kind for d, s in scheds.items()},
        "figures": report.figures, "targets": TARGETS,
        "jobs_on_borrowed": [j.job_id for j in report.jobs_on_borrowed],
        "requeued": {j.job_id: j.finished_on for j in report.requeued},
        "vm": report.vm_nodes, "problems": report.problems,
        "timeline": [{"at": e.at - burst_a, "who": e.who, "what": e.what} for e in report.events],
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    (out / "timeline.txt").write_text(timeline + "\n\n" + summary + "\n")
    if report.problems:
        raise DemoError("the trade did not go as it should: " + "; ".join(report.problems)
                        + f" (timeline in {out / 'timeline.txt'})")
    log("")
    log(f"The lab is still up: ssh -i {topology.STATE_DIR}/id_ed25519 root@10.203.1.10 (a-head), "
        f"`viocluster status --config {BROKER_CONFIG}` there; `make demo-down` removes it.")
    return result
