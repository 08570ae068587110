"""Per-domain figures of one run, in the fields of summary.json."""

from __future__ import annotations

import numpy as np

from broker.simulator.engine import Domain, RunResult

SUMMARY_FIELDS = (
    "jobs", "mean_wait_s", "mean_response_s", "p95_response_s", "mean_bounded_slowdown",
    "utilization", "preemptions", "lost_node_seconds", "borrowed_node_hours",
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
