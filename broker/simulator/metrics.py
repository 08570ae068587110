"""Per-domain figures of one run, in the fields of summary.json, and per-job rows (jobs.csv)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from broker.simulator.engine import Domain, RunResult

SUMMARY_FIELDS = (
    "jobs", "mean_wait_s", "mean_response_s", "p95_response_s", "mean_bounded_slowdown",
    "utilization", "busy_node_hours", "preemptions", "lost_node_seconds", "borrowed_node_hours",
    "lent_node_hours",
)


def job_times(d: Domain) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Submit, wait and response time of every finished job of ``d``."""
    end = np.asarray(d.end)
    done = end >= 0
    submit = np.asarray(d.submit)[done]
    return submit, np.asarray(d.start)[done] - submit, end[done] - submit


def daily_response(d: Domain) -> dict[int, list[float]]:
    """Submit day -> [jobs, sum of their response times]."""
    submit, _, response = job_times(d)
    if not submit.size:
        return {}
    day = (submit // 86400.0).astype(np.int64)
    count = np.bincount(day)
    total = np.bincount(day, weights=response)
    return {int(i): [int(count[i]), float(total[i])] for i in np.flatnonzero(count)}


def busy_span(d: Domain) -> float:
    """Seconds from the domain's first submit (or first busy node) to the last moment any of
    its own nodes was busy: its own last job, or later a peer's job on a node it lent. Every
    busy node-second falls inside, so utilization cannot exceed 1."""
    st = d.stats
    begin = min(st.first_submit, st.busy_from)
    end = max(st.last_end, st.busy_until)
    return end - begin if end > begin else 0.0


def domain_summary(d: Domain) -> dict[str, float | int]:
    st = d.stats
    submit, wait, response = job_times(d)
    n = int(submit.size)
    run = np.asarray(d.run)[np.asarray(d.end) >= 0]
    span = busy_span(d)
    util = st.busy_own_node_seconds / (d.capacity * span) if span > 0 else 0.0
    bsld = np.maximum(1.0, response / np.maximum(run, 10.0)) if n else np.zeros(0)
    return {
        "jobs": n,
        "mean_wait_s": round(float(wait.mean()), 3) if n else 0.0,
        "mean_response_s": round(float(response.mean()), 3) if n else 0.0,
        "p95_response_s": round(float(np.percentile(response, 95)), 3) if n else 0.0,
        "mean_bounded_slowdown": round(float(bsld.mean()), 4) if n else 0.0,
        "utilization": round(util, 5),
        "busy_node_hours": round(st.busy_own_node_seconds / 3600.0, 3),
        "preemptions": st.preemptions,
        "lost_node_seconds": round(st.lost_node_seconds, 3),
        "borrowed_node_hours": round(st.borrowed_node_seconds / 3600.0, 3),
        "lent_node_hours": round(st.lent_node_seconds / 3600.0, 3),
    }


def run_summary(result: RunResult) -> dict[str, dict[str, float | int]]:
    return {d.name: domain_summary(d) for d in result.domains}


SERIES_FIELDS = ("t_s", "demand", "waiting_nodes", "running_nodes", "borrowed", "lent",
                 "completed", "mean_response_s")


def series_rows(result: RunResult) -> dict[str, list[tuple]]:
    return {d.name: d.series for d in result.domains}


JOB_FIELDS = ("job", "submit", "starts", "end", "nodes", "on", "preemptions",
              "lost_node_seconds")
# starts: the start of each run of the job, ';'-separated, the last the run that finished;
# on: where each of those runs was, own (the domain's nodes) or borrowed (VMs of a peer)


def job_rows(d: Domain) -> Iterator[tuple]:
    """One tuple a job of ``d`` in the order of JOB_FIELDS, ``starts`` and ``on`` as tuples."""
    ids = d.w.job_ids or range(1, len(d.w) + 1)
    size, submit, start, end, on_vms = d.size, d.submit, d.start, d.end, d.on_vms
    history = d.history
    for j in range(len(size)):
        if j in history:
            yield _one_row(d, j)
        else:
            yield (ids[j], submit[j], (start[j],), end[j], size[j],
                   ("borrowed" if on_vms[j] else "own",), 0, 0.0)


def jobs_csv_text(label: str, d: Domain) -> str:
    """The jobs.csv lines of domain ``d`` in run ``label`` (no header), times to 12 digits."""
    name = d.name
    ids = d.w.job_ids or range(1, len(d.w) + 1)
    size, submit, start, end, on_vms = d.size, d.submit, d.start, d.end, d.on_vms
    history = d.history
    lines = []
    for j in range(len(size)):
        if j in history:
            job, sub, starts, e, nodes, on, cuts, lost = _one_row(d, j)
            lines.append(f"{label},{name},{job},{sub:.12g},"
                         + ";".join(f"{t:.12g}" for t in starts)
                         + f",{e:.12g},{nodes},{';'.join(on)},{cuts},{lost:.12g}")
        else:
            lines.append(f"{label},{name},{ids[j]},{submit[j]:.12g},{start[j]:.12g},"
                         f"{end[j]:.12g},{size[j]},{'borrowed' if on_vms[j] else 'own'},0,0")
    return "\n".join(lines) + "\n" if lines else ""


def _one_row(d: Domain, j: int) -> tuple:
    """The row of a job that was preempted at least once."""
    ids = d.w.job_ids or range(1, len(d.w) + 1)
    cut = d.history[j]
    size = d.size[j]
    return (ids[j], d.submit[j], (*(c[0] for c in cut), d.start[j]), d.end[j], size,
            (*("borrowed" if c[2] else "own" for c in cut),
             "borrowed" if d.on_vms[j] else "own"),
            len(cut), sum(size * (c[1] - c[0]) for c in cut))
