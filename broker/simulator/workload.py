"""A domain's workload as the simulator replays it: per job submit, run time, nodes, estimate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from broker.errors import UserError
from broker.simulator.swf import Trace


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
    ) -> Workload:
        order = np.lexsort((np.arange(len(submit)), submit))
        start = float(submit[order[0]]) if len(order) else 0.0
        return cls(
            name=name,
            capacity=int(capacity),
            submit=(submit[order] - start).astype(float).tolist(),
            runtime=np.maximum(runtime[order], 0).astype(float).tolist(),
            nodes=nodes[order].astype(int).tolist(),
            estimate=estimate[order].astype(float).tolist(),
            unix_start=int(unix_start + start),
            source=source,
        )


def from_trace(
    name: str,
    trace: Trace,
    capacity: int | None = None,
    start_day: float | None = None,
    end_day: float | None = None,
) -> Workload:
    """The jobs of ``trace`` submitted in [start_day, end_day) (days from the log's start)."""
    data = trace.data
    submit = data[:, 1]
    keep = np.ones(len(submit), dtype=bool)
    if start_day is not None:
        keep &= submit >= start_day * 86400
    if end_day is not None:
        keep &= submit < end_day * 86400
    runtime = np.maximum(data[keep, 3], 0)
    req = data[keep, 8]
    estimate = np.where(req > runtime, req, runtime)
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
        trace.procs[keep],
        estimate,
        unix_start=trace.unix_start,
        source=trace.path + section,
    )
