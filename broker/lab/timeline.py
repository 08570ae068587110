"""The demo's account of a trade, from what it observed: plain objects, no I/O.

Inputs are the two brokers' contracts (``viocluster contracts --all --json``, each with its
transitions and their times), what the demo saw while polling (job states, the VM process) and
the jobs' output files on the borrower's shared filesystem. Out come the timeline, the
figures the project's targets are about, and the checks that say whether the trade happened
as it should.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_LINE = re.compile(r"^(start|done) (\S+) ([0-9.]+)$")


@dataclass(frozen=True)
class Event:
    at: float
    who: str  # "A", "B", "demo"
    what: str


@dataclass
class JobRun:
    """One job of the burst, from its output file (one start/done pair per run of it)."""

    job_id: str
    starts: list[tuple[str, float]] = field(default_factory=list)
    dones: list[tuple[str, float]] = field(default_factory=list)
    # nodes the scheduler showed the job taken off. The output file can miss a run's start
    # there: a VM killed right after the job started takes its unwritten NFS pages with it.
    taken_off: list[str] = field(default_factory=list)

    @property
    def finished_on(self) -> str | None:
        return self.dones[-1][0] if self.dones else None

    @property
    def requeued_from(self) -> list[str]:
        """Nodes where a run started and never finished (the job was taken off them)."""
        done_hosts = [h for h, _ in self.dones]
        out = []
        for host, _at in self.starts:
            if host in done_hosts:
                done_hosts.remove(host)
            else:
                out.append(host)
        return out + [h for h in self.taken_off if h not in out]


def parse_job_output(job_id: str, text: str) -> JobRun:
    run = JobRun(job_id)
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        entry = (m.group(2), float(m.group(3)))
        (run.starts if m.group(1) == "start" else run.dones).append(entry)
    return run


def _transitions(contracts: list[dict[str, Any]], role: str, since: float) -> list[dict[str, Any]]:
    """Every transition of the contracts in ``role`` made after ``since``, oldest first."""
    out = []
    for c in contracts:
        if c.get("role") != role or c.get("created_at", 0) < since:
            continue
        for t in c.get("transitions", []):
            out.append({**t, "contract": c})
    return sorted(out, key=lambda t: t["at"])


def _first(transitions: list[dict[str, Any]], to: str, contract_id: str | None = None) -> dict | None:
    for t in transitions:
        if t["to"] == to and (contract_id is None or t["contract"]["id"] == contract_id):
            return t
    return None


@dataclass
class Report:
    events: list[Event]
    figures: dict[str, float | None]
    jobs: list[JobRun]
    vm_nodes: list[str]
    problems: list[str]

    @property
    def jobs_on_borrowed(self) -> list[JobRun]:
        return [j for j in self.jobs if j.finished_on in self.vm_nodes]

    @property
    def requeued(self) -> list[JobRun]:
        return [j for j in self.jobs if any(h in self.vm_nodes for h in j.requeued_from)]


def build_report(*, burst_a: float, burst_b: float | None, a_contracts: list[dict[str, Any]],
                 b_contracts: list[dict[str, Any]], observations: list[Event],
                 jobs: list[JobRun], own_nodes: set[str],
                 taken_off: dict[str, str] | None = None) -> Report:
    """Put the observations in order, work out the figures and check the trade's outcome.

    ``taken_off`` maps a job to the node the scheduler showed it taken off (requeued), as the
    demo saw while polling; it adds to what the jobs' output files say."""
    for job in jobs:
        node = (taken_off or {}).get(job.job_id)
        if node and node not in job.taken_off:
            job.taken_off.append(node)
    a_borrow = _transitions(a_contracts, "borrower", burst_a - 1)
    b_lend = _transitions(b_contracts, "lender", burst_a - 1)
    events = [Event(burst_a, "demo", "burst of jobs submitted to domain A")]
    if burst_b is not None:
        events.append(Event(burst_b, "demo", "burst of jobs submitted to domain B"))
    turned_down: list[dict[str, Any]] = []
    for t in a_borrow:
        c = t["contract"]
        if not any(x["to"] == "agreed" for x in c.get("transitions", [])):
            if t["to"] == "closed":  # asked, and the peer had nothing to offer
                turned_down.append(t)
            continue
        nodes = ", ".join(c.get("nodes") or []) or "-"
        events.append(Event(t["at"], "A", f"contract {c['id']} {t['from'] or '-'} -> {t['to']}: "
                                          f"{t['reason'][:90]} [{nodes}]"))
    if turned_down:
        reasons = sorted({t["reason"] for t in turned_down})
        events.append(Event(turned_down[0]["at"], "A",
                            f"asked again {len(turned_down)} time(s) without an agreement: "
                            f"{'; '.join(r[:80] for r in reasons[:3])}"))
    for t in b_lend:
        c = t["contract"]
        events.append(Event(t["at"], "B", f"contract {c['id']} {t['from'] or '-'} -> {t['to']}: "
                                          f"{t['reason'][:90]}"))
    events.extend(observations)
    events.sort(key=lambda e: e.at)

    figures: dict[str, float | None] = {
        "ask_to_agreed_s": None, "agreed_to_idle_s": None, "reclaim_to_requeued_s": None,
        "reclaim_to_vm_gone_s": None, "reclaim_to_closed_s": None,
    }
    problems: list[str] = []
    # The trade with B: A may hold contracts with other lenders too (a domain with several
    # peers), whose VMs B's reclaim does not touch.
    b_ids = {c.get("id") for c in b_contracts}
    with_b = [t for t in a_borrow if t["contract"].get("id") in b_ids]
    active = _first(with_b or a_borrow, "active")
    vm_nodes: list[str] = []
    if active is None:
        problems.append("no borrowed VM became active in domain A")
    else:
        cid = active["contract"]["id"]
        vm_nodes = list(active["contract"].get("nodes") or [])
        proposed = _first(a_borrow, "proposed", cid)
        agreed = _first(a_borrow, "agreed", cid)
        if proposed and agreed:
            figures["ask_to_agreed_s"] = agreed["at"] - proposed["at"]
        if agreed:
            figures["agreed_to_idle_s"] = active["at"] - agreed["at"]
    reclaim = _first(b_lend, "reclaiming")
    if burst_b is not None:
        if reclaim is None:
            problems.append("domain B never reclaimed its machine")
        else:
            closed = _first(b_lend, "closed", reclaim["contract"]["id"])
            if closed:
                figures["reclaim_to_closed_s"] = closed["at"] - reclaim["at"]
            gone = next((e for e in observations if e.what.startswith("VM process gone")
                         and e.at >= reclaim["at"]), None)
            if gone:
                figures["reclaim_to_vm_gone_s"] = gone.at - reclaim["at"]
            requeued = next((e for e in observations if e.what.startswith("job requeued")
                             and e.at >= reclaim["at"] - 0.5), None)
            if requeued:
                figures["reclaim_to_requeued_s"] = max(requeued.at - reclaim["at"], 0.0)

    report = Report(events, figures, jobs, vm_nodes, problems)
    if vm_nodes and not report.jobs_on_borrowed:
        problems.append(f"no job finished on the borrowed VM ({', '.join(vm_nodes)})")
    for job in report.requeued:
        if job.finished_on not in own_nodes:
            problems.append(f"job {job.job_id}, requeued from the VM, did not finish on A's own "
                            f"nodes (finished on {job.finished_on or 'nothing'})")
    unfinished = [j.job_id for j in jobs if j.finished_on is None]
    if unfinished:
        problems.append(f"jobs without a finished run in their output: {', '.join(unfinished)}")
    return report


def format_timeline(report: Report, origin: float) -> str:
    lines = []
    for e in report.events:
        lines.append(f"  {e.at - origin:7.2f} s  {e.who:4} {e.what}")
    return "\n".join(lines)


def format_summary(report: Report, targets: dict[str, float]) -> str:
    def fig(key: str) -> str:
        value = report.figures.get(key)
        if value is None:
            return "not measured"
        target = targets.get(key)
        if target is None:
            return f"{value:.2f} s"
        return f"{value:.2f} s (target <= {target:g} s: {'met' if value <= target else 'MISSED'})"

    on_vm = report.jobs_on_borrowed
    lines = [
        f"  jobs of the burst:                 {len(report.jobs)}",
        f"  jobs run on the borrowed VM:       {len(on_vm)} ({', '.join(j.job_id for j in on_vm) or '-'})",
        f"  jobs requeued by the reclaim:      {len(report.requeued)} "
        f"({', '.join(f'{j.job_id} -> {j.finished_on}' for j in report.requeued) or '-'})",
        f"  ask -> agreed:                     {fig('ask_to_agreed_s')}",
        f"  agreement -> VM idle in A's Slurm: {fig('agreed_to_idle_s')}",
        f"  reclaim -> job requeued:           {fig('reclaim_to_requeued_s')}",
        f"  reclaim -> VM gone:                {fig('reclaim_to_vm_gone_s')}",
        f"  reclaim -> contract closed:        {fig('reclaim_to_closed_s')}",
    ]
    return "\n".join(lines)
