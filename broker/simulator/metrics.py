"""Per-domain figures of one run, in the fields of summary.json."""

from __future__ import annotations

import math

import numpy as np

from broker.simulator.engine import Domain, RunResult

SUMMARY_FIELDS = (
    "jobs", "mean_wait_s", "mean_response_s", "p95_response_s", "mean_bounded_slowdown",
    "utilization", "preemptions", "lost_node_seconds", "borrowed_node_hours",
    "lent_node_hours",
)


def domain_summary(d: Domain) -> dict[str, float | int]:
    st = d.stats
    n = st.jobs
    span = st.last_end - st.first_submit if n else 0.0
    util = st.busy_own_node_seconds / (d.capacity * span) if span > 0 else 0.0
    return {
        "jobs": n,
        "mean_wait_s": round(st.wait_sum / n, 3) if n else 0.0,
        "mean_response_s": round(st.response_sum / n, 3) if n else 0.0,
        "p95_response_s": round(float(np.percentile(st.responses, 95)), 3) if n else 0.0,
        "mean_bounded_slowdown": round(st.bsld_sum / n, 4) if n else 0.0,
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


def finite(x: float) -> float | None:
    return None if math.isnan(x) else x
