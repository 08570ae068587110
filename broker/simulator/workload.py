"""A domain's workload as the simulator replays it: per job submit, run time, nodes, estimate."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from broker.errors import TraceError, UserError
from broker.simulator.swf import Trace

# Why a job of a trace is not replayed (keys of ``Workload.left_out`` and of summary.json).
LEFT_OUT_REASONS: dict[str, str] = {
    "cancelled": "cancelled before it started (run time -1, or status 5 with run time 0)",
    "no_processors": "no processor count (fields 5 and 8 both -1 or 0)",
    "no_submit_time": "no submit time (field 2 below 0)",
}


class CapacityError(UserError):
    """A domain's capacity cannot hold one of its jobs, or is not a positive number."""


@dataclass(slots=True)
class Workload:
    """Jobs of one domain, sorted by submit time (seconds from the run's start).

    One processor of the trace is one node slot of the simulated domain. ``estimate`` is what
    the EASY scheduler believes a job will run: the user's requested time where the log has it
    and it is not below the real run time, else the real run time (a perfect estimate).
    """

    name: str
    capacity: int
    submit: list[float]
    runtime: list[float]
    nodes: list[int]
    estimate: list[float]
    unix_start: int = 0
    source: str = ""
    job_ids: list[int] = field(default_factory=list)  # the trace's job numbers (else 1..n)
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> jobs not replayed

    def __len__(self) -> int:
        return len(self.submit)

    @property
    def largest_job(self) -> int:
        return max(self.nodes, default=0)

    def check_capacity(self) -> None:
        if self.capacity < 1:
            raise CapacityError(f"domain {self.name}: capacity {self.capacity} must be >= 1")
        if self.largest_job > self.capacity:
            raise CapacityError(
                f"domain {self.name}: capacity {self.capacity} is below its largest job "
                f"({self.largest_job} nodes in {self.source or 'the workload'}); give a "
                f"capacity of at least {self.largest_job}"
            )

    @classmethod
    def from_arrays(
        cls,
        name: str,
        capacity: int,
        submit: np.ndarray,
        runtime: np.ndarray,
        nodes: np.ndarray,
        estimate: np.ndarray,
        unix_start: int = 0,
        source: str = "",
        job_ids: np.ndarray | None = None,
        left_out: dict[str, int] | None = None,
    ) -> Workload:
        order = np.lexsort((np.arange(len(submit)), submit))
        start = float(submit[order[0]]) if len(order) else 0.0
        ids = job_ids[order] if job_ids is not None else order + 1
        return cls(
            name=name,
            capacity=int(capacity),
            submit=(submit[order] - start).astype(float).tolist(),
            runtime=np.maximum(runtime[order], 0).astype(float).tolist(),
            nodes=nodes[order].astype(int).tolist(),
            estimate=estimate[order].astype(float).tolist(),
            unix_start=int(unix_start + start),
            source=source,
            job_ids=np.asarray(ids).astype(int).tolist(),
            left_out=dict(left_out or {}),
        )


@dataclass(frozen=True, slots=True)
class Screening:
    """Which rows of a trace a domain replays, and how many it left out for each reason."""

    keep: np.ndarray  # bool, one per trace row
    left_out: dict[str, int]


def screen(
    trace: Trace,
    start_day: float | None = None,
    end_day: float | None = None,
    strict: bool = False,
    include_cancelled: bool = False,
) -> Screening:
    """Decide which jobs of ``trace`` (submitted in [start_day, end_day)) are replayed.

    A job without a submit time belongs to no section and is never replayed; one without a
    processor count cannot be; a job cancelled before it started is left out unless
    ``include_cancelled`` (it then runs for 0 s). With ``strict`` the first job that cannot be
    replayed raises a :class:`TraceError` naming its line instead of being left out.
    """
    data = trace.data
    submit = data[:, 1]
    runtime = data[:, 3]
    no_submit = submit < 0
    section = ~no_submit
    if start_day is not None:
        section &= submit >= start_day * 86400
    if end_day is not None:
        section &= submit < end_day * 86400
    cancelled = section & ((runtime < 0) | ((data[:, 10] == 5) & (runtime <= 0)))
    if include_cancelled:
        cancelled[:] = False
    no_procs = section & ~cancelled & (trace.procs <= 0)
    if strict:
        bad = np.flatnonzero(no_submit | no_procs)
        if bad.size:
            i = int(bad[0])
            if no_submit[i]:
                what = f"has no submit time (field 2 is {data[i, 1]:g})"
            else:
                what = (f"has no processor count (fields 5 and 8 are {data[i, 4]:g} and "
                        f"{data[i, 7]:g})")
            raise TraceError(
                f"{trace.path}:{int(trace.lines[i])}: job {int(data[i, 0])} {what}; --strict "
                "refuses jobs that cannot be replayed (without it they are left out and "
                "counted)"
            )
    left_out = {
        "cancelled": int(cancelled.sum()),
        "no_processors": int(no_procs.sum()),
        "no_submit_time": int(no_submit.sum()),
    }
    return Screening(section & ~cancelled & ~no_procs, left_out)


def from_trace(
    name: str,
    trace: Trace,
    capacity: int | None = None,
    start_day: float | None = None,
    end_day: float | None = None,
    strict: bool = False,
    include_cancelled: bool = False,
) -> Workload:
    """The jobs of ``trace`` submitted in [start_day, end_day) (days from the log's start)
    that can be replayed (see :func:`screen`)."""
    data = trace.data
    submit = data[:, 1]
    screening = screen(trace, start_day, end_day, strict, include_cancelled)
    keep = screening.keep
    runtime = np.maximum(data[keep, 3], 0)
    req = data[keep, 8]
    estimate = np.where(req > runtime, req, runtime)
    procs = trace.procs[keep]
    cap = capacity if capacity is not None else trace.max_procs
    if cap is None:
        cap = trace.largest_job
    section = ""
    if start_day is not None or end_day is not None:
        section = f" days {start_day or 0:g}-{end_day if end_day is not None else 'end'}"
    return Workload.from_arrays(
        name,
        cap,
        submit[keep],
        runtime,
        procs,
        estimate,
        unix_start=trace.unix_start,
        source=trace.path + section,
        job_ids=data[keep, 0],
        left_out=screening.left_out,
    )
