"""Fault drills on the lab: a trade with a job on the borrowed VM, a fault, the recovery.

A drill brings domain A to borrow a machine of domain B (a burst of jobs on A, as in the demo),
waits until one of A's jobs runs on the borrowed VM, makes a fault (:mod:`broker.lab.faults`:
a crashed host, a partition, a killed process), then polls both sides until they have
recovered: both contracts ended, the borrowed node gone from A's scheduler, the lent host back
in B's service, the VM's job finished on another node. Afterwards it checks every job's output
(:mod:`broker.lab.faultcheck`: nothing lost, nothing run twice at once, nothing corrupted) and
what is left over (VMs, borrowed nodes, runtime switch peers, open contracts). The tests of
the ``faults`` marker and ``bench/bench_faults.py`` run the same drills.
"""

from __future__ import annotations

import base64
import json
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.lab import hosts as labhosts
from broker.lab.demo import BROKER_CLI, BROKER_CONFIG, DemoError, Shell, _contracts, _wait, reset
from broker.lab.faultcheck import JOB_SCRIPT, Observation, figures, job_problems, parse_output

HEADS = {"a": "a-head", "b": "b-head"}
VM_PREFIX = "a-v"  # A's borrowed nodes (the broker names them after the domain)
ACCOUNT = "vcpeera"  # the lending hosts' account of domain A (playbooks/site.yml)
OPEN = ("proposed", "agreed", "provisioning", "active", "reclaiming")
DRAINED = ("drain", "drained", "draining", "down", "fail")


@dataclass
class Trade:
    """The drill's trade as it stood when the fault was made."""

    contract: str
    node: str  # the VM's node name in A's scheduler
    host: str  # B's lending host
    job: str  # A's job running on the VM


@dataclass
class DrillResult:
    fault: str
    trade: Trade
    fault_at: float
    figures: dict[str, float | None]
    problems: list[str] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # job -> host that finished it


class Drill:
    """One drill on the lab that is up and converged (site.yml done)."""

    def __init__(self, plan: labhosts.Plan, log: Callable[[str], None] = print,
                 jobs: int = 3, job_seconds: int = 30, timeout_s: float = 240.0) -> None:
        self.plan, self.log = plan, log
        self.jobs, self.job_seconds, self.timeout_s = jobs, job_seconds, timeout_s
        self.shell = Shell(plan)
        self.rundir = ""
        self.ids: list[str] = []

    def close(self) -> None:
        self.shell.close()

    # -------------------------------------------------------------------------- helpers
    def _ask(self, host: str, command: str, timeout: float = 8.0) -> str | None:
        """A command's output, or None when the host cannot be asked now (crashed, cut off)."""
        try:
            return self.shell.run(host, command, timeout=timeout)
        except DemoError:
            return None

    _SEP = "=====viocluster-drill====="

    def _side(self, domain: str, commands: list[str]) -> list[str] | None:
        """Several commands on a domain's head in one SSH round trip; None when it cannot be
        asked now (crashed, cut off)."""
        joined = f"; echo {self._SEP}; ".join(f"{{ {c}; }} 2>/dev/null" for c in commands)
        out = self._ask(HEADS[domain], joined, timeout=15.0)
        if out is None:
            return None
        parts = out.split(self._SEP + "\n")
        return parts if len(parts) == len(commands) else None

    @staticmethod
    def _open(contracts_json: str, contract: str) -> bool | None:
        try:
            rows = json.loads(contracts_json)
        except ValueError:
            return None
        for row in rows:
            if row.get("id") == contract:
                return row.get("state") in OPEN
        return False  # not held (any more): nothing open

    @staticmethod
    def _in_service(sinfo_state: str) -> bool | None:
        if not sinfo_state.strip():
            return None
        state = sinfo_state.split()[0].lower()
        if "*" in state:
            return False  # its slurmd does not answer
        return not any(state.startswith(d) for d in DRAINED)

    def observe(self, trade: Trade) -> Observation:
        """Both sides at once (two SSH round trips in parallel)."""
        contracts = f"{BROKER_CLI} contracts --config {BROKER_CONFIG} --all --json"
        results: dict[str, list[str] | None] = {}

        def ask(domain: str, commands: list[str]) -> None:
            results[domain] = self._side(domain, commands)

        threads = [
            threading.Thread(target=ask, args=("a", [contracts, "sinfo -h -N -o %N",
                                                      f"squeue -h -j {trade.job} -o '%T %N'"])),
            threading.Thread(target=ask, args=("b", [contracts,
                                                      f"sinfo -h -N -n {trade.host} -o %T"])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        at = time.time()
        a, b = results.get("a"), results.get("b")
        borrower_open = node_in = job_elsewhere = lender_open = host_ok = None
        if a is not None:
            borrower_open = self._open(a[0], trade.contract)
            node_in = trade.node in a[1].split()
            if not a[2].strip():  # the job has left the queue: where did it finish?
                raw = self.read_output(trade.job)
                finished = parse_output(trade.job, raw).finished_on if raw is not None else None
                job_elsewhere = None if raw is None else (finished is not None
                                                          and finished != trade.node)
            else:
                job_elsewhere = False
        if b is not None:
            lender_open = self._open(b[0], trade.contract)
            host_ok = self._in_service(b[1])
        return Observation(at, borrower_open, lender_open, node_in, host_ok, job_elsewhere)

    def read_output(self, job: str) -> bytes | None:
        out = self._ask(HEADS["a"], f"base64 -w0 {self.rundir}/a-{job}.out 2>/dev/null || true", 20)
        return None if out is None else base64.b64decode(out.strip() or b"")

    # ---------------------------------------------------------------------------- phases
    def _burst(self) -> None:
        """A clean start and a burst on A that its own nodes cannot hold."""
        reset(self.shell, HEADS, self.timeout_s)
        self.rundir = f"/home/viocluster-drill/{time.strftime('%Y%m%d-%H%M%S')}"
        script = shlex.quote(JOB_SCRIPT.format(seconds=self.job_seconds))
        for head in HEADS.values():
            self.shell.run(head, f"mkdir -p {self.rundir} && printf '%s' {script} > "
                                 f"{self.rundir}/job.sh && chmod 755 {self.rundir}/job.sh")
        self.ids = self.shell.run(HEADS["a"], " && ".join(
            [f"sbatch --parsable -p phys,borrowed --requeue --open-mode=append -J drill "
             f"-o {self.rundir}/a-%j.out {self.rundir}/job.sh"] * self.jobs)).split()
        self.log(f"burst on A: jobs {', '.join(self.ids)} ({self.job_seconds} s each)")

    def burst_on_b(self) -> None:
        """Jobs on B's own nodes: B needs its lent host back (B's outputs are not checked)."""
        ids = self.shell.run(HEADS["b"], " && ".join(
            [f"sbatch --parsable -p phys -J drill-b -o {self.rundir}/b-%j.out "
             f"{self.rundir}/job.sh"] * 2)).split()
        self.log(f"burst on B: jobs {', '.join(ids)}")

    def wait_state(self, domain: str, state: str, timeout: float | None = None) -> str:
        """The id of the first contract of ``domain`` seen in ``state`` (polled quickly)."""
        found: list[str] = []
        cmd = f"{BROKER_CLI} contracts --config {BROKER_CONFIG} --json"

        def seen() -> bool:
            out = self._ask(HEADS[domain], cmd, timeout=10)
            try:
                rows = json.loads(out) if out else []
            except ValueError:
                return False
            found.extend(r["id"] for r in rows if r.get("state") == state)
            return bool(found)

        _wait(f"a contract of {domain.upper()} in state {state}", seen,
              timeout or self.timeout_s, 0.1)
        return found[0]

    def start_trade(self) -> Trade:
        """A clean start, a burst on A, and a job of A running on a VM of B's."""
        self._burst()
        found: dict[str, str] = {}

        def on_vm() -> bool:
            out = self.shell.run(HEADS["a"], "squeue -h -t RUNNING -o '%i %N'", timeout=20)
            for line in out.splitlines():
                job, _, node = line.partition(" ")
                if job in self.ids and node.startswith(VM_PREFIX):
                    found.update(job=job, node=node.strip())
                    return True
            return False

        _wait("a job of A running on a borrowed VM", on_vm, self.timeout_s, 0.5)
        active: list[dict] = []

        def admitted() -> bool:
            # Slurm may start a job on the VM a moment before the broker's admission sees the
            # node idle and makes the contract active.
            active[:] = [c for c in _contracts(self.shell, HEADS["a"], all_=False)
                         if c["role"] == "borrower" and c["state"] == "active"
                         and found["node"] in (c.get("nodes") or [])]
            return bool(active)

        try:
            _wait(f"broker A's contract for {found['node']} to be active", admitted, 30.0, 0.5)
        except DemoError:
            raise DemoError(f"job {found['job']} runs on {found['node']} but broker A has no "
                            "active contract for it") from None
        c = active[-1]
        trade = Trade(c["id"], found["node"], c["hosts"][0], found["job"])
        self.log(f"job {trade.job} runs on {trade.node} (contract {trade.contract}, "
                 f"lent by {trade.host})")
        return trade

    def run(self, fault: Fault) -> DrillResult:
        """Start the trade, make the fault, heal it after ``heal_after_s`` (or once the
        contracts ended, when None), poll until recovered, then check jobs and leftovers.
        A fault with ``expect_recovery`` False is too short or too mild to end the trade: the
        contract must stay active and healthy; the drill then watches for ``settle_s``."""
        if fault.kill_in_state is not None:
            return self.run_kill_in_state(*fault.kill_in_state)
        name, heal, heal_after_s = fault.name, fault.heal, fault.heal_after_s
        expect_recovery, settle_s = fault.expect_recovery, fault.settle_s
        trade = self.start_trade()
        fault_at = time.time()
        fault.inject(self, trade)
        self.log(f"fault: {name}")
        seen: list[Observation] = []
        healed = heal is None
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            o = self.observe(trade)
            seen.append(o)
            since = time.time() - fault_at
            if not healed and (heal_after_s is not None and since >= heal_after_s
                               or heal_after_s is None and o.borrower_open is False
                               and o.lender_open in (False, None)):
                assert heal is not None
                heal(self, trade)
                healed = True
                self.log(f"healed after {since:.1f} s")
            if not expect_recovery and healed and since >= settle_s:
                break
            f = figures(fault_at, seen)
            if expect_recovery and healed and all(v is not None for v in f.values()):
                break
            time.sleep(0.5)
        if not healed and heal is not None:
            heal(self, trade)
        result = DrillResult(name, trade, fault_at, figures(fault_at, seen), observations=seen)
        if expect_recovery:
            missing = [k for k, v in result.figures.items() if v is None]
            if missing:
                result.problems.append(f"not recovered within {self.timeout_s:g} s: "
                                       f"{', '.join(missing)}")
        else:
            last = seen[-1] if seen else None
            if last is None or last.borrower_open is not True or last.lender_open is not True:
                result.problems.append("a fault shorter than the fence window ended the trade")
        self.finish(result)
        return result

    def run_chain(self, faults: list[Fault]) -> DrillResult:
        """Faults that must not end the trade, one after the other on one trade: each is made
        (and healed after its ``heal_after_s``), then the drill watches for its ``settle_s``;
        at the end of each, both brokers must still hold the contract open, the node must be in
        A's Slurm and the VM's job still running there. One trade for all keeps the suite short;
        the VM's job runs long enough to outlive them all."""
        if any(f.expect_recovery or f.kill_in_state for f in faults):
            raise DemoError("a chain takes only faults that must not end the trade")
        saved = self.job_seconds
        self.job_seconds = max(saved, int(sum(f.settle_s + (f.heal_after_s or 0) for f in faults)
                                          + 40))
        try:
            trade = self.start_trade()
        finally:
            self.job_seconds = saved
        result = DrillResult(" + ".join(f.name for f in faults), trade, time.time(), {})
        for fault in faults:
            at = time.time()
            fault.inject(self, trade)
            self.log(f"fault: {fault.name}")
            healed = fault.heal is None
            while time.time() - at < max(fault.settle_s, fault.heal_after_s or 0.0):
                if not healed and fault.heal and time.time() - at >= (fault.heal_after_s or 0.0):
                    fault.heal(self, trade)
                    healed = True
                    self.log(f"healed after {time.time() - at:.1f} s")
                result.observations.append(self.observe(trade))
                time.sleep(0.5)
            if not healed and fault.heal:
                fault.heal(self, trade)
            o = self.observe(trade)
            result.observations.append(o)
            if not (o.borrower_open and o.lender_open and o.node_in_scheduler):
                result.problems.append(
                    f"{fault.name}: the trade did not stay healthy (borrower open "
                    f"{o.borrower_open}, lender open {o.lender_open}, node in Slurm "
                    f"{o.node_in_scheduler})")
            vms = self._ask(trade.host, "viocluster-vms list")
            if vms is not None and trade.node not in vms.split():
                result.problems.append(f"{fault.name}: the VM {trade.node} is gone from "
                                       f"{trade.host}")
            where = self.job_where(trade.job)
            if where is not None and where != ("RUNNING", trade.node):
                result.problems.append(f"{fault.name}: job {trade.job} no longer runs on "
                                       f"{trade.node} ({' '.join(where)})")
        self.finish(result)
        return result

    def job_where(self, job: str) -> tuple[str, str] | None:
        out = self._ask(HEADS["a"], f"squeue -h -j {job} -o '%T %N'")
        if out is None:
            return None
        parts = out.split()
        return (parts[0], parts[1] if len(parts) > 1 else "") if parts else ("GONE", "")

    def run_kill_in_state(self, domain: str, state: str) -> DrillResult:
        """SIGKILL a broker while its side of the trade is in ``state`` (``provisioning``:
        while borrow.yml runs; ``reclaiming``: B is taking its host back for a burst of its
        own). systemd restarts the broker; reconciliation rolls back or carries on. Then the
        jobs must all finish once and intact, the brokers settle with nothing open that they
        disagree about, and nothing is left over."""
        name = f"{domain.upper()}'s broker SIGKILLed with the contract {state}"
        if state == "reclaiming":
            trade = self.start_trade()
            self.burst_on_b()
            contract = self.wait_state(domain, state)
        else:
            self._burst()
            contract = self.wait_state(domain, state)
            trade = Trade(contract, "", "", "")
        fault_at = time.time()
        _kill_unit(HEADS[domain], "viocluster-broker")(self, trade)
        self.log(f"fault: {name} (contract {contract})")
        result = DrillResult(name, trade, fault_at, {})
        self.finish(result, settle=True)
        return result

    def finish(self, result: DrillResult, settle: bool = False) -> None:
        """Every job finished exactly once, no overlap, no corruption; nothing left over."""
        def all_done() -> bool:
            out = self._ask(HEADS["a"], "squeue -h -o %i", 20)
            return out is not None and not set(out.split()) & set(self.ids)

        try:
            _wait("every job of the drill to finish", all_done, self.timeout_s + 3 * self.job_seconds, 2.0)
        except DemoError as err:
            result.problems.append(str(err))
        if settle:
            try:
                reset(self.shell, HEADS, self.timeout_s)  # every contract closed, no borrowed node
            except DemoError as err:
                result.problems.append(f"the brokers did not settle after the jobs: {err}")
        for job in self.ids:
            raw = self.read_output(job) or b""
            out = parse_output(job, raw)
            result.jobs[job] = out.finished_on or ""
            result.problems.extend(job_problems(out))
        open_ok = not settle and not result.figures.get("contracts_ended_s")
        result.problems.extend(self.leftovers(result.trade, open_ok=open_ok))

    def leftovers(self, trade: Trade, open_ok: bool = False) -> list[str]:
        """What no contract accounts for, once the drill's trade is over (or, ``open_ok``,
        still healthy): borrowed nodes, VMs on B's lending hosts, runtime switch peers."""
        found: list[str] = []
        if open_ok:
            return found
        a_open = [c["id"] for c in _contracts(self.shell, HEADS["a"], all_=False)]
        b_open = [c["id"] for c in _contracts(self.shell, HEADS["b"], all_=False)]
        if trade.contract in a_open or trade.contract in b_open:
            found.append(f"contract {trade.contract} still open (A {trade.contract in a_open}, "
                         f"B {trade.contract in b_open})")
        if not a_open:
            nodes = self.shell.run(HEADS["a"], "sinfo -h -N -p borrowed -o %N", check=False).split()
            if nodes:
                found.append(f"borrowed nodes in A's Slurm with no contract: {', '.join(nodes)}")
            for host in ("a-head", "a-node1", "a-node2"):
                peers = self._ask(host, "violinctl -n a peers list | awk '$3 == \"runtime\" {print $1}'")
                if peers and peers.strip():
                    found.append(f"runtime switch peers on {host} with no contract: {peers.split()}")
        if not b_open:
            for host in ("b-node1", "b-node2"):
                vms = self._ask(host, "viocluster-vms list")
                if vms and vms.strip():
                    found.append(f"VMs on {host} with no contract: {vms.split()}")
        return found


# ------------------------------------------------------------------------------ the faults
Action = Callable[[Drill, Trade], None]


@dataclass(frozen=True)
class Fault:
    """A fault a drill makes: how, how it is healed and when, and what must follow."""

    name: str
    inject: Action
    heal: Action | None = None
    heal_after_s: float | None = None  # None: once both contracts ended
    expect_recovery: bool = True  # False: too short or mild to end the trade; it stays healthy
    settle_s: float = 0.0
    kill_in_state: tuple[str, str] | None = None  # (domain, state): that broker killed then


def _plan() -> labhosts.Plan:
    from broker.lab import topology

    p = labhosts.Plan.load(topology.STATE_DIR)
    if p is None:
        raise DemoError("the lab is not up")
    return p


def _kill(host: str, what: str, pgrep: str) -> Action:
    """SIGKILL the processes ``pgrep`` finds on ``host`` (a lab host), by their PIDs."""
    def act(drill: Drill, _t: Trade) -> None:
        pids = drill.shell.run(host, f"pgrep {pgrep} || true").split()
        if not pids:
            raise DemoError(f"{host}: no {what} to kill (pgrep {pgrep})")
        drill.shell.run(host, f"kill -KILL {' '.join(pids)}")
    return act


def _kill_unit(host: str, unit: str) -> Action:
    """SIGKILL a systemd service's main process on ``host``, as a crash of it (its unit's
    Restart= brings it back)."""
    def act(drill: Drill, _t: Trade) -> None:
        pid = drill.shell.run(host, f"systemctl show -p MainPID --value {unit}").strip()
        if not pid.isdigit() or pid == "0":
            raise DemoError(f"{host}: {unit} is not running")
        drill.shell.run(host, f"kill -KILL {pid}")
    return act


def _noop(_d: Drill, _t: Trade) -> None:
    pass


def catalogue(fence_s: float = 10.0) -> dict[str, Fault]:
    """The drills, by name. ``fence_s``: the VMs' fence window (borrow.yml's ``trade_fence_s``)."""
    from broker.lab import faults

    def crash_lender(_d: Drill, t: Trade) -> None:
        faults.crash(_plan(), t.host)

    def start_lender(_d: Drill, t: Trade) -> None:
        faults.start(_plan(), t.host)

    def crash_head(_d: Drill, _t: Trade) -> None:
        faults.crash(_plan(), HEADS["a"])

    def start_head(_d: Drill, _t: Trade) -> None:
        faults.start(_plan(), HEADS["a"])

    def partition(_d: Drill, _t: Trade) -> None:
        faults.partition(_plan(), "a", "b")

    def heal(_d: Drill, _t: Trade) -> None:
        faults.heal(_plan())

    def switch_kill(d: Drill, t: Trade) -> None:
        _kill(t.host, f"switch daemon of {ACCOUNT}", f"-u {ACCOUNT} -f violin-switchd")(d, t)

    def restart_slurmctld(d: Drill, _t: Trade) -> None:
        d.shell.run(HEADS["a"], "systemctl restart slurmctld")

    settle = 1.5 * fence_s  # a VM that fenced itself wrongly is gone W + 1 s after the fault
    return {
        "lender-crash": Fault(
            "the lending host crashes (power cut), and comes back after the trade ended",
            inject=crash_lender, heal=start_lender),
        "partition-long": Fault(
            f"domains A and B partitioned for {6 * fence_s:g} s (longer than the fence window)",
            inject=partition, heal=heal, heal_after_s=6 * fence_s),
        "partition-short": Fault(
            f"domains A and B partitioned for {fence_s / 3:g} s (shorter than the fence window)",
            inject=partition, heal=heal, heal_after_s=fence_s / 3,
            expect_recovery=False, settle_s=settle),
        "switch-kill": Fault(
            "the switch daemon that carries the VM's network on its host is killed",
            inject=switch_kill),
        "slurmctld-restart": Fault(
            "the borrower's slurmctld restarts", inject=restart_slurmctld,
            expect_recovery=False, settle_s=settle),
        "borrower-broker-kill": Fault(
            "the borrower's broker is SIGKILLed with the contract active (systemd restarts it)",
            inject=_kill_unit(HEADS["a"], "viocluster-broker"),
            expect_recovery=False, settle_s=settle),
        "lender-broker-kill": Fault(
            "the lender's broker is SIGKILLed with the contract active (systemd restarts it)",
            inject=_kill_unit(HEADS["b"], "viocluster-broker"),
            expect_recovery=False, settle_s=settle),
        "borrower-broker-kill-provisioning": Fault(
            "the borrower's broker is SIGKILLed while borrow.yml runs", inject=_noop,
            kill_in_state=("a", "provisioning")),
        "lender-broker-kill-provisioning": Fault(
            "the lender's broker is SIGKILLed while the borrower provisions", inject=_noop,
            kill_in_state=("b", "provisioning")),
        "lender-broker-kill-reclaiming": Fault(
            "the lender's broker is SIGKILLed while it reclaims its host", inject=_noop,
            kill_in_state=("b", "reclaiming")),
        "borrower-head-crash": Fault(
            f"the borrower's head node (slurmctld, broker, NFS) crashes, back after {3 * fence_s:g} s",
            inject=crash_head, heal=start_head, heal_after_s=3 * fence_s),
    }
