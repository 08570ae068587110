"""What a fault drill checks, from what it observed: plain objects, no I/O.

A drill's jobs write a line when they start, one each second while they run and one when they
end, each with the host and the time, to their output file on the borrower's shared
filesystem (:data:`JOB_SCRIPT`). From those files alone :func:`job_problems` tells whether a
job was lost, ran twice at once (two hosts' runs overlap in time) or had its output corrupted
(NUL bytes, a broken line: what a VM's late NFS write after a partition does). From the
observations of both sides (:class:`Observation`, one per poll) :func:`figures` works out how
long after the fault each part of the recovery was done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: A drill's job: start, a tick a second, done; each line "<what> <host> <epoch seconds>".
JOB_SCRIPT = """#!/bin/sh
# A job of a VioCluster fault drill: says where it runs, each second while it runs, and where
# it finished.
echo "start $(hostname) $(date +%s.%N)"
i=0
while [ "$i" -lt {seconds} ]; do
    sleep 1
    i=$((i + 1))
    echo "tick $(hostname) $(date +%s.%N)"
done
echo "done $(hostname) $(date +%s.%N)"
"""

_LINE = re.compile(r"^(start|tick|done) (\S+) ([0-9]+(?:\.[0-9]+)?)$")
#: What Slurm itself writes into a job's output, e.g. when the job is requeued off a node set
#: down: "slurmstepd-NODE: error: *** JOB 68 ON NODE CANCELLED AT ... ***". Not corruption.
#: The job's shell reporting that its ``sleep`` was killed when the scheduler signalled the job
#: (a requeue while the VM still runs): a whole line of its own, e.g. "Terminated".
_SCHEDULER_NOTE = re.compile(r"^slurmstepd(-\S+)?: \S|^(Terminated|Killed|Hangup)$")


@dataclass
class HostRun:
    """What one host wrote of a job: the first and last time it said anything."""

    host: str
    first: float
    last: float
    done: bool = False


@dataclass
class JobOutput:
    job_id: str
    runs: list[HostRun] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines the scheduler wrote (requeue notices)

    @property
    def finished_on(self) -> str | None:
        done = [r for r in self.runs if r.done]
        return done[-1].host if done else None


def parse_output(job_id: str, raw: bytes) -> JobOutput:
    """One :class:`HostRun` per host that wrote to the file (a job requeued to the same host
    counts once, from its first to its last line), and every line that is not a drill line."""
    out = JobOutput(job_id)
    by_host: dict[str, HostRun] = {}
    nuls = raw.count(b"\x00")
    if nuls:
        out.corrupt.append(f"{nuls} NUL byte(s)")
    text = raw.replace(b"\x00", b"").decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if not m and _SCHEDULER_NOTE.match(line.strip()):
            out.notes.append(line.strip())
            continue
        if not m:
            out.corrupt.append(f"line {number}: {line[:60]!r}")
            continue
        what, host, at = m.group(1), m.group(2), float(m.group(3))
        run = by_host.get(host)
        if run is None:
            run = by_host[host] = HostRun(host, at, at)
            out.runs.append(run)
        run.first, run.last = min(run.first, at), max(run.last, at)
        run.done = run.done or what == "done"
    return out


def job_problems(job: JobOutput, tolerance_s: float = 0.0) -> list[str]:
    """Lost (no host finished it), ran twice at once (two hosts' runs overlap by more than
    ``tolerance_s``), corrupted output."""
    problems = [f"job {job.job_id}: output corrupted ({c})" for c in job.corrupt]
    if job.finished_on is None:
        problems.append(f"job {job.job_id}: lost (no run finished; runs on "
                        f"{', '.join(r.host for r in job.runs) or 'nothing'})")
    runs = sorted(job.runs, key=lambda r: r.first)
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            overlap = min(a.last, b.last) - max(a.first, b.first)
            if overlap > tolerance_s:
                problems.append(f"job {job.job_id}: ran on {a.host} and {b.host} at once "
                                f"for {overlap:.1f} s")
    return problems


@dataclass(frozen=True)
class Observation:
    """One poll of both sides after the fault. ``None``: that side could not be asked."""

    at: float
    borrower_open: bool | None  # the borrower still holds the drill's contract open
    lender_open: bool | None  # the lender still holds it open
    node_in_scheduler: bool | None  # the borrowed node is still in the borrower's scheduler
    host_in_service: bool | None  # the lent host is back in its owner's scheduler, not drained
    job_finished_elsewhere: bool | None  # the VM's job finished on another node


FIGURES = ("contracts_ended_s", "node_gone_s", "host_back_s", "job_elsewhere_s")


def figures(fault_at: float, observations: list[Observation]) -> dict[str, float | None]:
    """Seconds from the fault to the first poll from which on each part stayed done."""

    def settled(pred) -> float | None:
        since: float | None = None
        for o in sorted(observations, key=lambda o: o.at):
            value = pred(o)
            if value is True:
                since = o.at if since is None else since
            elif value is False:
                since = None
        return None if since is None else max(since - fault_at, 0.0)

    return {
        "contracts_ended_s": settled(lambda o: None if o.borrower_open is None or o.lender_open is None
                                     else not (o.borrower_open or o.lender_open)),
        "node_gone_s": settled(lambda o: None if o.node_in_scheduler is None
                               else not o.node_in_scheduler),
        "host_back_s": settled(lambda o: o.host_in_service),
        "job_elsewhere_s": settled(lambda o: o.job_finished_elsewhere),
    }
