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
                 jobs: int = 4, job_seconds: int = 40, timeout_s: float = 240.0) -> None:
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

    def contract_open(self, domain: str, contract: str) -> bool | None:
        out = self._ask(HEADS[domain], f"{BROKER_CLI} contracts --config {BROKER_CONFIG} --all --json")
        if out is None:
            return None
        try:
            rows = json.loads(out)
        except ValueError:
            return None
        for row in rows:
            if row.get("id") == contract:
                return row.get("state") in OPEN
        return False  # not held (any more): nothing open

    def node_in_scheduler(self, node: str) -> bool | None:
        out = self._ask(HEADS["a"], f"sinfo -h -N -n {shlex.quote(node)} -o %N")
        return None if out is None else node in out.split()

    def host_in_service(self, host: str) -> bool | None:
        out = self._ask(HEADS["b"], f"sinfo -h -N -n {shlex.quote(host)} -o %T")
        if out is None or not out.strip():
            return None
        state = out.split()[0].lower().rstrip("*~#!%$@^-")
        return not any(state.startswith(d) for d in DRAINED) and "*" not in out

    def job_where(self, job: str) -> tuple[str, str] | None:
        out = self._ask(HEADS["a"], f"squeue -h -j {job} -o '%T %N'")
        if out is None:
            return None
        parts = out.split()
        return (parts[0], parts[1] if len(parts) > 1 else "") if parts else ("GONE", "")

    def job_finished_elsewhere(self, job: str, vm: str) -> bool | None:
        where = self.job_where(job)
        if where is None or where[0] != "GONE":
            return None if where is None else False
        raw = self.read_output(job)
        if raw is None:
            return None
        finished = parse_output(job, raw).finished_on
        return finished is not None and finished != vm

    def read_output(self, job: str) -> bytes | None:
        out = self._ask(HEADS["a"], f"base64 -w0 {self.rundir}/a-{job}.out 2>/dev/null || true", 20)
        return None if out is None else base64.b64decode(out.strip() or b"")

    # ---------------------------------------------------------------------------- phases
    def start_trade(self) -> Trade:
        """A clean start, a burst on A, and a job of A running on a VM of B's."""
        reset(self.shell, HEADS, self.timeout_s)
        self.rundir = f"/home/viocluster-drill/{time.strftime('%Y%m%d-%H%M%S')}"
        script = shlex.quote(JOB_SCRIPT.format(seconds=self.job_seconds))
        self.shell.run(HEADS["a"], f"mkdir -p {self.rundir} && printf '%s' {script} > "
                                   f"{self.rundir}/job.sh && chmod 755 {self.rundir}/job.sh")
        self.ids = self.shell.run(HEADS["a"], " && ".join(
            [f"sbatch --parsable -p phys,borrowed --requeue --open-mode=append -J drill "
             f"-o {self.rundir}/a-%j.out {self.rundir}/job.sh"] * self.jobs)).split()
        self.log(f"burst on A: jobs {', '.join(self.ids)} ({self.job_seconds} s each)")
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
        active = [c for c in _contracts(self.shell, HEADS["a"], all_=False)
                  if c["role"] == "borrower" and c["state"] == "active"
                  and found["node"] in (c.get("nodes") or [])]
        if not active:
            raise DemoError(f"job {found['job']} runs on {found['node']} but broker A has no "
                            "active contract for it")
        c = active[-1]
        trade = Trade(c["id"], found["node"], c["hosts"][0], found["job"])
        self.log(f"job {trade.job} runs on {trade.node} (contract {trade.contract}, "
                 f"lent by {trade.host})")
        return trade

    def observe(self, trade: Trade) -> Observation:
        return Observation(time.time(), self.contract_open("a", trade.contract),
                           self.contract_open("b", trade.contract),
                           self.node_in_scheduler(trade.node), self.host_in_service(trade.host),
                           self.job_finished_elsewhere(trade.job, trade.node))

    def run(self, name: str, inject: Callable[[Trade], None],
            heal: Callable[[Trade], None] | None = None, heal_after_s: float | None = None,
            expect_recovery: bool = True, settle_s: float = 0.0) -> DrillResult:
        """Start the trade, make the fault, heal it after ``heal_after_s`` (or once the
        contracts ended, when None), poll until recovered, then check jobs and leftovers.
        ``expect_recovery`` False: the fault is too short to end the trade (the contract must
        stay active and healthy); then the drill watches for ``settle_s``."""
        trade = self.start_trade()
        fault_at = time.time()
        inject(trade)
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
                heal(trade)
                healed = True
                self.log(f"healed after {since:.1f} s")
            if not expect_recovery and healed and since >= settle_s:
                break
            f = figures(fault_at, seen)
            if expect_recovery and healed and all(v is not None for v in f.values()):
                break
            time.sleep(0.5)
        if not healed and heal is not None:
            heal(trade)
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

    def finish(self, result: DrillResult) -> None:
        """Every job finished exactly once, no overlap, no corruption; nothing left over."""
        def all_done() -> bool:
            out = self._ask(HEADS["a"], "squeue -h -o %i", 20)
            return out is not None and not set(out.split()) & set(self.ids)

        try:
            _wait("every job of the drill to finish", all_done, self.timeout_s + 3 * self.job_seconds, 2.0)
        except DemoError as err:
            result.problems.append(str(err))
        for job in self.ids:
            raw = self.read_output(job) or b""
            out = parse_output(job, raw)
            result.jobs[job] = out.finished_on or ""
            result.problems.extend(job_problems(out))
        result.problems.extend(self.leftovers(result.trade, open_ok=not result.figures.get("contracts_ended_s")))

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
@dataclass(frozen=True)
class Fault:
    """A fault a drill makes: how, how it is healed and when, and what must follow."""

    name: str
    inject: Callable[[Trade], None]
    heal: Callable[[Trade], None] | None = None
    heal_after_s: float | None = None  # None: once both contracts ended
    expect_recovery: bool = True  # False: too short to end the trade; it must stay healthy
    settle_s: float = 0.0


def catalogue(fence_s: float = 10.0) -> dict[str, Fault]:
    """The drills, by name. ``fence_s``: the VMs' fence window (borrow.yml's ``trade_fence_s``)."""
    from broker.lab import faults, topology

    def plan() -> labhosts.Plan:
        p = labhosts.Plan.load(topology.STATE_DIR)
        if p is None:
            raise DemoError("the lab is not up")
        return p

    def partition(_t: Trade) -> None:
        faults.partition(plan(), "a", "b")

    def heal(_t: Trade) -> None:
        faults.heal(plan())

    return {
        "lender-crash": Fault(
            "the lending host crashes (power cut), and comes back after the trade ended",
            inject=lambda t: faults.crash(plan(), t.host),
            heal=lambda t: faults.start(plan(), t.host)),
        "partition-long": Fault(
            f"domains A and B partitioned for {6 * fence_s:g} s (longer than the fence window)",
            inject=partition, heal=heal, heal_after_s=6 * fence_s),
        "partition-short": Fault(
            f"domains A and B partitioned for {fence_s / 3:g} s (shorter than the fence window)",
            inject=partition, heal=heal, heal_after_s=fence_s / 3,
            expect_recovery=False, settle_s=3 * fence_s),
    }
