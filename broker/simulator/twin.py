"""The simulator's twin of a live lab run: one workload, replayed in the simulator with the
costs the lab measured, and the two compared per domain and per job. Plain objects, no I/O:
:mod:`broker.lab.twin` runs the workload in the lab and hands its observations here.

The workload is a few bursts per domain (:class:`Burst`), each a number of one-node jobs
submitted over a short spread with run times drawn from a range (seeded: the same seed gives
the same jobs). The lab's run gives, per job, the time it was really submitted and every run
of it (where: an own node or a borrowed VM; when it started; when it finished), and each
broker's contracts with their timed transitions. From those come the costs the simulator is
configured with (:func:`measure_costs`): the brokers' interval (their config), the boot of a
VM (agreed -> active: borrow.yml, the boot, the node idle in the scheduler), its halt (the
lender's reclaiming -> closed) and the slowdown of a job on a VM. The simulator then replays
the very submit times the lab saw (:func:`simulate`), and :func:`compare` puts the figures
side by side with the checks the twin is held to.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from broker.errors import UserError
from broker.policy import DomainPolicy
from broker.simulator.engine import LOG_LEND, SimConfig, Simulation
from broker.simulator.invariants import check_run
from broker.simulator.metrics import run_summary
from broker.simulator.workload import Workload

ESTIMATE_S = 120.0  # every job asks for 2 min (sbatch -t 2): Slurm's limits are in minutes
WAIT_TOLERANCE = 0.25  # mean wait per domain: within 25 % of the lab's
COUNT_TOLERANCE = 1  # trades and preemptions per domain: within one of the lab's


class TwinError(UserError):
    """The twin comparison cannot be made from what it was given; the message says why."""


@dataclass(frozen=True)
class Burst:
    """``count`` one-node jobs of ``domain`` submitted evenly over ``spread_s`` seconds from
    ``at`` (seconds after the run's start), each running a whole number of seconds drawn
    uniformly from ``runtime_s`` (both ends included)."""

    domain: str
    at: float
    count: int
    spread_s: float
    runtime_s: tuple[int, int]

    def __post_init__(self) -> None:
        lo, hi = self.runtime_s
        if self.count < 1 or self.at < 0 or self.spread_s < 0 or not 1 <= lo <= hi:
            raise TwinError(f"burst {self}: needs count >= 1, at >= 0, spread_s >= 0 and "
                            "1 <= shortest <= longest run time")


# About ten minutes, 46 jobs: A outgrows its two nodes first and borrows from B; B's own burst
# takes its node back; then A again, then a long burst of B's that A's idle nodes serve until A
# needs them back. Every kind of step happens: ask, lend, boot, job on a VM, reclaim, requeue.
DEFAULT_BURSTS: tuple[Burst, ...] = (
    Burst("a", 0, 12, 40, (30, 60)),
    Burst("b", 150, 6, 20, (30, 50)),
    Burst("a", 270, 8, 30, (20, 50)),
    Burst("b", 330, 12, 60, (30, 60)),
    Burst("a", 480, 8, 40, (20, 40)),
)


@dataclass(frozen=True)
class TwinJob:
    domain: str
    index: int  # 1.. within its domain, in submit order
    submit: float  # planned seconds after the start
    runtime: int


def twin_workload(bursts: Sequence[Burst] = DEFAULT_BURSTS, seed: int = 1) -> list[TwinJob]:
    """The jobs of ``bursts``, by submit time, numbered within each domain."""
    rng = np.random.default_rng(seed)
    raw: list[tuple[float, str, int]] = []
    for b in bursts:
        step = b.spread_s / b.count
        lo, hi = b.runtime_s
        for k in range(b.count):
            raw.append((b.at + k * step, b.domain, int(rng.integers(lo, hi + 1))))
    raw.sort(key=lambda r: (r[0], r[1]))
    counters: dict[str, int] = {}
    jobs = []
    for submit, domain, runtime in raw:
        counters[domain] = counters.get(domain, 0) + 1
        jobs.append(TwinJob(domain, counters[domain], round(submit, 3), runtime))
    return jobs


def swf_text(jobs: Iterable[TwinJob], domain: str, capacity: int) -> str:
    """The domain's jobs as a Standard Workload Format log (``viocluster simulate`` reads it)."""
    lines = [f"; Computer: the VioCluster lab, domain {domain} (twin workload)",
             f"; MaxNodes: {capacity}", f"; MaxProcs: {capacity}"]
    for j in jobs:
        if j.domain == domain:
            lines.append(f"{j.index} {j.submit:.3f} -1 {j.runtime} 1 -1 -1 1 {ESTIMATE_S:.0f} "
                         "-1 1 1 1 1 1 1 -1 -1")
    return "\n".join(lines) + "\n"


@dataclass
class JobOutcome:
    """What became of one job: when it was submitted, each run (where, from when, to when:
    ``end`` None for a run cut short) and whether it finished."""

    domain: str
    index: int
    submit: float  # seconds after the run's start
    runtime: int
    runs: list[tuple[str, float, float | None]] = field(default_factory=list)  # (own|borrowed, start, end)
    hosts: list[str] = field(default_factory=list)  # where each run was (the lab's; empty simulated)

    @property
    def finished(self) -> bool:
        return bool(self.runs) and self.runs[-1][2] is not None

    @property
    def wait(self) -> float:
        """From submit to the start of the run that finished (the simulator's definition)."""
        return self.runs[-1][1] - self.submit

    @property
    def response(self) -> float:
        end = self.runs[-1][2]
        assert end is not None
        return end - self.submit

    @property
    def preemptions(self) -> int:
        return len(self.runs) - 1

    @property
    def placement(self) -> str:
        return self.runs[-1][0]


@dataclass(frozen=True)
class Trade:
    """One agreed contract as its borrower saw it."""

    borrower: str
    lender: str
    at: float  # seconds after the run's start (agreed)
    vms: int


@dataclass(frozen=True)
class Costs:
    """The simulator's settings as the lab measured them. ``boot_s`` is the simulator's boot:
    from the agreement until the borrower can run a job on the VM; ``active_s`` (for the
    record) until the broker saw the VM idle in its scheduler, the scheduler's next pass
    short of that."""

    interval_s: float
    boot_s: float
    halt_s: float
    slowdown: float
    requeue_delay_s: float = 0.0
    active_s: float = 0.0
    samples: Mapping[str, int] = field(default_factory=dict)  # figure -> how many measurements

    def config(self, epoch: float) -> SimConfig:
        return SimConfig(interval=self.interval_s, boot_delay=self.boot_s,
                         halt_delay=self.halt_s, slowdown=self.slowdown, sharing=True,
                         epoch=epoch, check_invariants=True, requeue_delay=self.requeue_delay_s)


def _median(values: Sequence[float], default: float) -> float:
    return float(statistics.median(values)) if values else default


def transition(contract: Mapping[str, Any], to: str) -> float | None:
    """When a contract (as ``viocluster contracts --json`` gives it) first went ``to`` a state."""
    return next((float(t["at"]) for t in contract.get("transitions", []) if t.get("to") == to), None)


def measure_costs(interval_s: float, contracts: Mapping[str, Sequence[Mapping[str, Any]]],
                  outcomes: Sequence[JobOutcome], requeue_delays: Sequence[float] = (),
                  first_use: Sequence[float] = ()) -> Costs:
    """The lab's costs, each the median of what this run measured.

    boot: a borrowed contract from its agreement to the first job on its VM (``first_use``);
    without those, from ``agreed`` to ``active`` (the VM idle in its scheduler);
    halt: a lender's contract from ``reclaiming`` to ``closed`` (its node back in its own
    scheduler); slowdown: a finished run on a borrowed VM over its job's run time, less the
    same ratio on own nodes (what the node itself adds, as the start and end lines show);
    requeue delay: how long the scheduler held a requeued job back (``requeue_delays``, as the
    lab saw them in the queue)."""
    boots, halts = [], []
    for items in contracts.values():
        for c in items:
            agreed, active = transition(c, "agreed"), transition(c, "active")
            reclaiming, closed = transition(c, "reclaiming"), transition(c, "closed")
            if c.get("role") == "borrower" and agreed is not None and active is not None:
                boots.append(active - agreed)
            if c.get("role") == "lender" and reclaiming is not None and closed is not None:
                halts.append(closed - reclaiming)
    ratios: dict[str, list[float]] = {"own": [], "borrowed": []}
    for o in outcomes:
        for where, start, end in o.runs:
            if end is not None:
                ratios[where].append((end - start) / o.runtime)
    own = _median(ratios["own"], 1.0)
    vm = _median(ratios["borrowed"], own)
    active = _median(boots, 0.0)
    boot = _median(list(first_use), active)
    return Costs(interval_s, boot, _median(halts, 0.0), max(0.0, vm - own),
                 _median(list(requeue_delays), 0.0), active,
                 {"boot_s": len(first_use) or len(boots), "active_s": len(boots),
                  "halt_s": len(halts), "slowdown": len(ratios["borrowed"]),
                  "requeue_delay_s": len(requeue_delays)})


def _workloads(outcomes: Sequence[JobOutcome], capacities: Mapping[str, int]) -> list[Workload]:
    out = []
    for name in capacities:
        mine = sorted((o for o in outcomes if o.domain == name), key=lambda o: (o.submit, o.index))
        out.append(Workload(name=name, capacity=capacities[name],
                            submit=[o.submit for o in mine], runtime=[float(o.runtime) for o in mine],
                            nodes=[1] * len(mine), estimate=[ESTIMATE_S] * len(mine),
                            job_ids=[o.index for o in mine], source="the twin workload"))
    return out


@dataclass
class SimRun:
    outcomes: list[JobOutcome]
    trades: list[Trade]
    violations: list[str]  # what the simulator's invariant check found (nothing, normally)


def simulate(submitted: Sequence[JobOutcome], capacities: Mapping[str, int],
             policies: Mapping[str, DomainPolicy], costs: Costs, epoch: float = 0.0) -> SimRun:
    """Replay the jobs the lab was given (their real submit times, their run times) in the
    simulator with the lab's costs and policies; what became of each job and each trade."""
    missing = [d for d in capacities if d not in policies]
    if missing:
        raise TwinError(f"no policy for domain(s) {', '.join(missing)}")
    workloads = _workloads(submitted, capacities)
    config = costs.config(epoch)
    sim = Simulation(workloads, [policies[d] for d in capacities], config)
    result = sim.run()
    names = list(capacities)
    outcomes = []
    for d in result.domains:
        ids = d.w.job_ids
        for j in range(len(d.w)):
            runs: list[tuple[str, float, float | None]] = [
                ("borrowed" if on_vms else "own", start, None)
                for start, _end, on_vms in d.history.get(j, [])]
            runs.append(("borrowed" if d.on_vms[j] else "own", d.start[j],
                         d.end[j] if d.end[j] >= 0 else None))
            outcomes.append(JobOutcome(d.name, ids[j], d.submit[j], int(d.w.runtime[j]), runs))
    trades: dict[tuple[float, int, int], int] = {}
    assert sim.log is not None
    for entry in sim.log:
        if entry[1] == LOG_LEND:
            key = (entry[0], entry[2], entry[4])
            trades[key] = trades.get(key, 0) + 1
    trade_list = [Trade(names[b], names[lender], t, n) for (t, lender, b), n in sorted(trades.items())]
    report = check_run(result, sim.log, config, run_summary(result))
    return SimRun(outcomes, trade_list, [str(v) for v in report.violations])


@dataclass(frozen=True)
class DomainFigures:
    jobs: int
    finished: int
    trades: int  # contracts agreed as the borrower
    vms: int  # VMs those contracts brought
    lent: int  # VMs this domain lent
    preemptions: int  # runs of this domain's jobs cut short (requeued)
    on_borrowed: int  # jobs whose finishing run was on a borrowed VM
    mean_wait_s: float
    mean_response_s: float


def figures(outcomes: Sequence[JobOutcome], trades: Sequence[Trade],
            domains: Sequence[str]) -> dict[str, DomainFigures]:
    out = {}
    for name in domains:
        mine = [o for o in outcomes if o.domain == name]
        done = [o for o in mine if o.finished]
        out[name] = DomainFigures(
            jobs=len(mine), finished=len(done),
            trades=sum(1 for t in trades if t.borrower == name),
            vms=sum(t.vms for t in trades if t.borrower == name),
            lent=sum(t.vms for t in trades if t.lender == name),
            preemptions=sum(o.preemptions for o in mine),
            on_borrowed=sum(1 for o in done if o.placement == "borrowed"),
            mean_wait_s=float(np.mean([o.wait for o in done])) if done else math.nan,
            mean_response_s=float(np.mean([o.response for o in done])) if done else math.nan,
        )
    return out


@dataclass(frozen=True)
class Check:
    domain: str
    what: str
    lab: float
    sim: float
    ok: bool
    rule: str


@dataclass
class Comparison:
    lab: dict[str, DomainFigures]
    sim: dict[str, DomainFigures]
    checks: list[Check]
    same_placement: dict[str, tuple[int, int]]  # domain -> (jobs placed alike, jobs)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"lab": {d: asdict(f) for d, f in self.lab.items()},
                "sim": {d: asdict(f) for d, f in self.sim.items()},
                "checks": [asdict(c) for c in self.checks],
                "same_placement": {d: list(v) for d, v in self.same_placement.items()},
                "ok": self.ok}


def compare(lab: Sequence[JobOutcome], lab_trades: Sequence[Trade], sim: Sequence[JobOutcome],
            sim_trades: Sequence[Trade], domains: Sequence[str]) -> Comparison:
    """Per domain: the figures of each side, and the checks (mean wait within 25 %, trades and
    preemptions within one); per job: whether its finishing run was placed alike (own node or
    borrowed VM) in both."""
    fl, fs = figures(lab, lab_trades, domains), figures(sim, sim_trades, domains)
    checks = []
    for d in domains:
        a, b = fl[d], fs[d]
        ok_wait = (math.isfinite(a.mean_wait_s) and math.isfinite(b.mean_wait_s)
                   and abs(a.mean_wait_s - b.mean_wait_s) <= WAIT_TOLERANCE * a.mean_wait_s)
        checks.append(Check(d, "mean wait (s)", a.mean_wait_s, b.mean_wait_s, ok_wait,
                            f"within {WAIT_TOLERANCE:.0%} of the lab's"))
        checks.append(Check(d, "trades", a.trades, b.trades,
                            abs(a.trades - b.trades) <= COUNT_TOLERANCE, "within one"))
        checks.append(Check(d, "preemptions", a.preemptions, b.preemptions,
                            abs(a.preemptions - b.preemptions) <= COUNT_TOLERANCE, "within one"))
    by_key = {(o.domain, o.index): o for o in sim}
    same: dict[str, tuple[int, int]] = {}
    for d in domains:
        mine = [o for o in lab if o.domain == d and o.finished]
        alike = sum(1 for o in mine if (s := by_key.get((d, o.index))) is not None
                    and s.finished and s.placement == o.placement)
        same[d] = (alike, len(mine))
    return Comparison(fl, fs, checks, same)


def format_comparison(c: Comparison, costs: Costs) -> str:
    rows = [("figure", *(f"{d} lab" for d in c.lab), *(f"{d} sim" for d in c.lab))]
    keys = [("jobs finished", "finished", "{:.0f}"), ("trades (as borrower)", "trades", "{:.0f}"),
            ("VMs borrowed", "vms", "{:.0f}"), ("VMs lent", "lent", "{:.0f}"),
            ("preemptions", "preemptions", "{:.0f}"), ("finished on a VM", "on_borrowed", "{:.0f}"),
            ("mean wait (s)", "mean_wait_s", "{:.1f}"),
            ("mean response (s)", "mean_response_s", "{:.1f}")]
    domains = list(c.lab)
    for label, attr, fmt in keys:
        rows.append((label, *(fmt.format(getattr(c.lab[d], attr)) for d in domains),
                     *(fmt.format(getattr(c.sim[d], attr)) for d in domains)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.append("")
    lines.append("same placement (own node or borrowed VM) of a job's finishing run: "
                 + ", ".join(f"{d} {a}/{n}" for d, (a, n) in c.same_placement.items()))
    lines.append(f"the simulator's costs, measured in the lab: interval {costs.interval_s:g} s, "
                 f"boot {costs.boot_s:.2f} s (n={costs.samples.get('boot_s', 0)}; the VM idle in "
                 f"the scheduler after {costs.active_s:.2f} s), halt "
                 f"{costs.halt_s:.2f} s (n={costs.samples.get('halt_s', 0)}), slowdown on a VM "
                 f"{costs.slowdown:.1%} (n={costs.samples.get('slowdown', 0)}), requeue delay "
                 f"{costs.requeue_delay_s:g} s (n={costs.samples.get('requeue_delay_s', 0)})")
    lines.append("")
    for ch in c.checks:
        lines.append(f"  {'ok  ' if ch.ok else 'DIFF'} {ch.domain} {ch.what}: lab {ch.lab:.1f}, "
                     f"simulator {ch.sim:.1f} ({ch.rule})")
    return "\n".join(lines)
