"""Check one simulated run against the rules every run must keep (``--check-invariants``).

The engine, asked to (``SimConfig.check_invariants``), keeps a log of what it did: jobs
started (on own nodes or on borrowed VMs), ended or preempted; nodes lent as VMs, VMs up,
halting and returned (see the LOG_* layout in :mod:`broker.simulator.engine`). This module
replays that log with its own plain bookkeeping, independent of the engine's, and checks:

- ``time-order``: the log never goes back in time;
- ``start-before-submit``: no job starts before its submit time;
- ``job-size``: a job runs on exactly as many nodes as it asks for;
- ``own-and-borrowed``: no job runs across own and borrowed nodes;
- ``job-cap``: no job runs on a VM whose lender caps the jobs it runs (``max_job_s``) below
  the job's estimate (its requested time);
- ``capacity``: a domain's own nodes busy with its jobs plus those it lent never exceed its
  capacity, and its jobs on VMs never use more VMs than it holds up and idle, so the nodes in
  use never exceed capacity plus borrowed;
- ``vm``: a VM runs jobs only once it is up, halts only without a job, comes back once, and
  boots and halts in the configured times;
- ``end-once``: a job ends exactly once, at its start plus its run time (slower on VMs), and
  is never started again after it ended;
- ``summary``: per domain, the jobs, preemptions, lost node-seconds, busy, borrowed and lent
  node-hours of summary.json, and every row of jobs.csv, are what the log adds up to;
  utilization is at most 1.

The violations come back in log order; the first is the one to look at.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from broker.simulator.engine import (
    LOG_DOWN,
    LOG_END,
    LOG_HALT,
    LOG_LEND,
    LOG_PREEMPT,
    LOG_START,
    LOG_UP,
    RunResult,
    SimConfig,
)
from broker.simulator.metrics import job_rows

MAX_LISTED = 20  # violations kept in full; the rest are only counted
_BOOTING, _UP, _HALTING = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: which, when, where, and what was seen."""

    invariant: str
    t: float
    domain: str
    what: str

    def __str__(self) -> str:
        return f"{self.invariant}: t={self.t:.12g} s, domain {self.domain}: {self.what}"


@dataclass(slots=True)
class InvariantReport:
    """What checking one run found: log entries replayed, violations (the first MAX_LISTED
    kept) and how many there were in all."""

    events: int = 0
    count: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.count == 0

    @property
    def first(self) -> Violation | None:
        return self.violations[0] if self.violations else None

    def add(self, invariant: str, t: float, domain: str, what: str) -> None:
        self.count += 1
        if len(self.violations) < MAX_LISTED:
            self.violations.append(Violation(invariant, t, domain, what))

    def as_dict(self) -> dict:
        return {"events": self.events, "violations": self.count,
                "first": str(self.first) if self.first else None,
                "listed": [str(v) for v in self.violations]}


class _Vm:
    __slots__ = ("lender", "borrower", "state", "job", "lent_at", "halt_at")

    def __init__(self, lender: int, borrower: int, t: float) -> None:
        self.lender = lender
        self.borrower = borrower
        self.state = _BOOTING
        self.job = -1
        self.lent_at = t
        self.halt_at = -1.0


def _close(a: float, b: float, tol: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=tol)


def check_run(result: RunResult, log: Iterable[tuple], config: SimConfig,
              summary: dict[str, dict] | None = None) -> InvariantReport:
    """Replay ``log`` (the engine's, or any list in its layout) over the workloads of
    ``result`` and check every invariant; ``summary`` is the run's per-domain summary
    (:func:`broker.simulator.metrics.run_summary`), and the jobs.csv rows come from
    ``result``'s domains."""
    report = InvariantReport()
    domains = result.domains
    names = [d.name for d in domains]
    n_dom = len(domains)
    cap = [d.capacity for d in domains]
    job_cap = [d.policy.reclamation.terms.max_job_s for d in domains]
    own_busy = [0] * n_dom  # own nodes running own jobs
    lent = [0] * n_dom  # own nodes lent (VM booting, up or halting)
    busy_s = [0.0] * n_dom  # node-seconds own nodes were busy (own jobs, peers' jobs on VMs)
    borrowed_s = [0.0] * n_dom
    lent_s = [0.0] * n_dom
    lost_s = [0.0] * n_dom
    preempted = [0] * n_dom
    vms: dict[int, _Vm] = {}
    gone: set[int] = set()  # VMs already back with their owners
    running: list[dict[int, tuple[float, int, tuple[int, ...]]]] = [{} for _ in domains]
    runs: list[dict[int, list[tuple[float, str]]]] = [{} for _ in domains]  # job -> starts
    ended: list[dict[int, float]] = [{} for _ in domains]
    lost_job: list[dict[int, float]] = [{} for _ in domains]  # job -> node-seconds cut short
    slow = 1.0 + config.slowdown
    last_t = -math.inf
    add = report.add

    def release(di: int, j: int, t: float) -> None:
        start, own, used = running[di].pop(j)
        if own:
            own_busy[di] -= own
            busy_s[di] += own * (t - start)
        for vid in used:
            vm = vms.get(vid)
            if vm is not None:
                vm.job = -1
                busy_s[vm.lender] += t - start

    events = 0
    for entry in log:
        events += 1
        t, kind, di, ref, a, used = entry
        name = names[di] if 0 <= di < n_dom else str(di)
        if t < last_t:
            add("time-order", t, name, f"logged after t={last_t:.12g} s")
        last_t = max(last_t, t)
        if kind == LOG_START:
            d = domains[di]
            j = ref
            if j in running[di]:
                add("end-once", t, name, f"job {_id(d, j)} started while it was running")
                continue
            if j in ended[di]:
                add("end-once", t, name, f"job {_id(d, j)} started again after it ended at "
                    f"{ended[di][j]:.12g} s")
            if t < d.submit[j]:
                add("start-before-submit", t, name,
                    f"job {_id(d, j)} started before its submit time {d.submit[j]:.12g} s")
            if a and used:
                add("own-and-borrowed", t, name, f"job {_id(d, j)} started on {a} own nodes "
                    f"and {len(used)} borrowed VMs at once")
            if a + len(used) != d.size[j]:
                add("job-size", t, name, f"job {_id(d, j)} started on {a + len(used)} nodes; "
                    f"it asks for {d.size[j]}")
            if a:
                own_busy[di] += a
                if own_busy[di] + lent[di] > cap[di]:
                    add("capacity", t, name, f"{own_busy[di]} own nodes busy and {lent[di]} "
                        f"lent, above its capacity {cap[di]}")
            for vid in used:
                vm = vms.get(vid)
                if vm is None or vm.borrower != di:
                    add("capacity", t, name, f"job {_id(d, j)} started on VM {vid}, which "
                        "the domain does not hold (nodes in use above capacity plus borrowed)")
                elif vm.state != _UP or vm.job >= 0:
                    state = "busy" if vm.job >= 0 else ("booting" if vm.state == _BOOTING
                                                        else "halting")
                    add("vm", t, name, f"job {_id(d, j)} started on VM {vid}, which is {state}")
                else:
                    vm.job = j
                    limit = job_cap[vm.lender] if 0 <= vm.lender < n_dom else None
                    if limit is not None and d.est[j] > limit:
                        add("job-cap", t, name, f"job {_id(d, j)} (estimate {d.est[j]:.12g} s) "
                            f"started on VM {vid} of {names[vm.lender]}, which caps jobs at "
                            f"{limit:.12g} s")
            running[di][j] = (t, a, used)
            runs[di].setdefault(j, []).append((t, "borrowed" if used else "own"))
        elif kind in (LOG_END, LOG_PREEMPT):
            d = domains[di]
            j = ref
            what = "ended" if kind == LOG_END else "was preempted"
            if j not in running[di]:
                add("end-once", t, name, f"job {_id(d, j)} {what} while not running"
                    + (f" (it ended at {ended[di][j]:.12g} s)" if j in ended[di] else ""))
                continue
            start, own, used = running[di][j]
            if kind == LOG_END:
                due = start + d.run[j] * (slow if used else 1.0)
                if not _close(t, due, 1e-6):
                    add("end-once", t, name, f"job {_id(d, j)} ended; started at "
                        f"{start:.12g} s, its run time ends it at {due:.12g} s")
                ended[di][j] = t
            else:
                preempted[di] += 1
                lost = d.size[j] * (t - start)
                lost_s[di] += lost
                lost_job[di][j] = lost_job[di].get(j, 0.0) + lost
            release(di, j, t)
        elif kind == LOG_LEND:
            lender, vid, borrower = di, ref, a
            if vid in vms or vid in gone:
                add("vm", t, name, f"VM {vid} lent twice")
                continue
            if not 0 <= borrower < n_dom or borrower == lender:
                add("vm", t, name, f"VM {vid} lent to domain {borrower}")
                continue
            vms[vid] = _Vm(lender, borrower, t)
            lent[lender] += 1
            if own_busy[lender] + lent[lender] > cap[lender]:
                add("capacity", t, name, f"{own_busy[lender]} own nodes busy and "
                    f"{lent[lender]} lent, above its capacity {cap[lender]}")
        elif kind in (LOG_UP, LOG_HALT, LOG_DOWN):
            vid = ref
            vm = vms.get(vid)
            if vm is None or vm.borrower != di:
                add("vm", t, name, f"VM {vid} is not one the domain borrowed"
                    + (" (already returned)" if vid in gone else ""))
                continue
            if kind == LOG_UP:
                if vm.state != _BOOTING:
                    add("vm", t, name, f"VM {vid} came up twice")
                elif not _close(t, vm.lent_at + config.boot_delay, 1e-6):
                    add("vm", t, name, f"VM {vid} up {t - vm.lent_at:.12g} s after it was "
                        f"lent; boot takes {config.boot_delay:g} s")
                if vm.state == _BOOTING:
                    vm.state = _UP
            elif kind == LOG_HALT:
                if vm.state == _HALTING:
                    add("vm", t, name, f"VM {vid} halted twice")
                elif vm.job >= 0:
                    add("vm", t, name, f"VM {vid} halted under its running job "
                        f"{_id(domains[di], vm.job)}")
                vm.state = _HALTING
                vm.halt_at = t
            else:
                if vm.state != _HALTING:
                    add("vm", t, name, f"VM {vid} returned to its owner without halting")
                elif not _close(t, vm.halt_at + config.halt_delay, 1e-6):
                    add("vm", t, name, f"VM {vid} returned {t - vm.halt_at:.12g} s after "
                        f"halting; halt takes {config.halt_delay:g} s")
                del vms[vid]
                gone.add(vid)
                lent[vm.lender] -= 1
                borrowed_s[di] += t - vm.lent_at
                lent_s[vm.lender] += t - vm.lent_at
        else:
            add("time-order", t, name, f"unknown log entry {entry!r}")
    report.events = events
    end = result.end_time
    for vm in vms.values():  # still held when the last job ended: counted up to then
        borrowed_s[vm.borrower] += end - vm.lent_at
        lent_s[vm.lender] += end - vm.lent_at
    for di, d in enumerate(domains):
        for j in running[di]:
            add("end-once", end, d.name, f"job {_id(d, j)} still running at the end")
        missing = len(d.size) - len(ended[di])
        if missing > 0:
            j = next(j for j in range(len(d.size)) if j not in ended[di])
            add("end-once", end, d.name, f"{missing} jobs never ended (the first: job "
                f"{_id(d, j)})")
    _check_outputs(report, result, summary, end, busy_s, borrowed_s, lent_s, lost_s,
                   preempted, runs, ended, lost_job)
    return report


def _id(d, j: int) -> int:
    return d.w.job_ids[j] if d.w.job_ids else j + 1


def _check_outputs(report: InvariantReport, result: RunResult, summary: dict | None,
                   end: float, busy_s: Sequence[float], borrowed_s: Sequence[float],
                   lent_s: Sequence[float], lost_s: Sequence[float], preempted: Sequence[int],
                   runs: Sequence[dict], ended: Sequence[dict],
                   lost_job: Sequence[dict]) -> None:
    """summary.json and jobs.csv against what the log adds up to."""
    add = report.add
    for di, d in enumerate(result.domains):
        if summary is not None:
            s = summary[d.name]
            seen = {
                "jobs": (len(ended[di]), 0),
                "preemptions": (preempted[di], 0),
                "lost_node_seconds": (lost_s[di], 2e-3),
                "busy_node_hours": (busy_s[di] / 3600.0, 2e-3),
                "borrowed_node_hours": (borrowed_s[di] / 3600.0, 2e-3),
                "lent_node_hours": (lent_s[di] / 3600.0, 2e-3),
            }
            for key, (value, tol) in seen.items():
                if not _close(float(s[key]), value, tol):
                    add("summary", end, d.name, f"summary {key} = {s[key]}, the run log adds "
                        f"up to {value:.12g}")
            if not 0.0 <= s["utilization"] <= 1.0:
                add("summary", end, d.name, f"utilization {s['utilization']} is not in [0, 1]")
        lost_rows = 0.0
        for j, row in enumerate(job_rows(d)):
            job, _submit, starts, end_t, nodes, on, cuts, lost = row
            logged = runs[di].get(j, [])
            logged_lost = lost_job[di].get(j, 0.0)
            if (list(starts) != [t for t, _ in logged] or list(on) != [w for _, w in logged]
                    or end_t != ended[di].get(j, -1.0) or cuts != len(logged) - 1
                    or not _close(lost, logged_lost, 1e-6)):
                add("summary", end, d.name, f"jobs.csv row of job {job} (starts {starts}, on "
                    f"{on}, end {end_t}, lost {lost:.12g}) differs from the run log (runs "
                    f"{logged}, end {ended[di].get(j, -1.0)}, lost {logged_lost:.12g})")
            lost_rows += lost
        if not _close(lost_rows, lost_s[di], 1e-3):
            add("summary", end, d.name, f"jobs.csv lost node-seconds add up to "
                f"{lost_rows:.12g}, the run log to {lost_s[di]:.12g}")
