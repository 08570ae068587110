"""``viocluster lab twin``: one workload in the live lab and in the simulator, side by side.

The lab part: the lab up and converged (as the demo does it), nothing left from before; then
the twin workload (:mod:`broker.simulator.twin`: bursts of one-node jobs on each domain over
about ten minutes) is submitted to each domain's Slurm at its planned times, while the jobs'
nodes are polled. Each job writes a start and a done line (host, time) per run to the shared
/home. When every job has finished and the brokers have closed their contracts, the run is
recorded (``lab.json``: the real submit times, every run of every job, both brokers' contracts
with their timed transitions, each broker's interval and policy as deployed).

The simulator part (:func:`replay`, also on a recorded ``lab.json``): the costs the lab
measured, the domains' policies as deployed, the same submit times and run times; then the
comparison, printed and written (``twin.txt``, ``twin.json``, the jobs of both runs as CSV).
"""

from __future__ import annotations

import csv
import json
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from broker.errors import ConfigError
from broker.lab import hosts as labhosts
from broker.lab import topology
from broker.lab.demo import (
    BROKER_CONFIG,
    Shell,
    Slurm,
    Watcher,
    _contracts,
    _wait,
    reset,
    run_site,
    scheduler_of,
)
from broker.policy import parse_policy
from broker.simulator import twin as model

JOB_SCRIPT = """#!/bin/sh
# A job of the twin workload: says where it runs, runs $1 seconds, says where it finished.
echo "start $(hostname) $(date +%s.%N)"
sleep "$1"
echo "done $(hostname) $(date +%s.%N)"
"""


@dataclass(frozen=True)
class TwinSettings:
    inventory: Path
    out: Path
    seed: int = 1
    bursts: tuple[model.Burst, ...] = model.DEFAULT_BURSTS
    run_site: bool = True
    finish_timeout_s: float = 900.0  # after the last submit, for every job to finish


def _log_step(log: Callable[[str], None], origin: float, text: str) -> None:
    log(f"[{time.time() - origin:7.2f} s] {text}")


# job, state, node, pending reason, submit time, (expected) start time
SQUEUE = "squeue -h -o '%i|%T|%N|%r|%V|%S'"


def parse_squeue(out: str) -> dict[str, tuple[str, str, float | None]]:
    """job -> (state, node, requeue delay): the delay is known for a job held back after a
    requeue (reason BeginTime: its start time is the eligible time, its submit time the
    requeue's)."""
    seen: dict[str, tuple[str, str, float | None]] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        job, state, node, reason, submit, start = parts
        delay = None
        if state == "PENDING" and reason == "BeginTime":
            try:
                delay = (datetime.fromisoformat(start) - datetime.fromisoformat(submit)).total_seconds()
            except ValueError:
                delay = None
        seen[job] = (state, node, delay)
    return seen


class Seen:
    """The nodes each job was seen running on (squeue), in order, with when first seen there:
    a run cut right after it started can miss its start line (a killed VM loses its unwritten
    NFS pages)."""

    def __init__(self, shell: Shell, heads: dict[str, str]) -> None:
        self.shell, self.heads = shell, heads
        self.lock = threading.Lock()
        self.ids: dict[str, dict[str, int]] = {d: {} for d in heads}  # Slurm id -> index
        self.runs: dict[tuple[str, int], list[tuple[str, float]]] = {}
        self.left: dict[str, set[str]] = {d: set() for d in heads}  # ids still queued
        # a requeued job Slurm holds back (reason BeginTime): its eligible time less the
        # time it was requeued (Slurm resets the submit time to it)
        self.requeue_delays: dict[tuple[str, int], float] = {}

    def poll(self, domain: str) -> None:
        out = self.shell.run(self.heads[domain], SQUEUE, timeout=20)
        now = time.time()
        seen = parse_squeue(out)
        with self.lock:
            ids = self.ids[domain]
            self.left[domain] = {j for j in seen if j in ids}
            for job, (state, node, delay) in seen.items():
                if job in ids and delay is not None:
                    self.requeue_delays[(domain, ids[job])] = delay
                if job not in ids or state not in ("RUNNING", "COMPLETING") or not node:
                    continue
                runs = self.runs.setdefault((domain, ids[job]), [])
                if not runs or runs[-1][0] != node:
                    runs.append((node, now))

    def queued(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.left.values())


Run = tuple[str, float, "float | None", str]  # own|borrowed, start, end (None: cut), host


def _runs_from_output(text: str, own: set[str], origin: float) -> list[Run]:
    """A job's runs from its output file: each start opens one, a done on the same host closes
    it; a start while one is open means the open one was cut short."""
    runs: list[Run] = []
    open_: tuple[str, float] | None = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("start", "done"):
            continue
        try:
            at = float(parts[2]) - origin
        except ValueError:
            continue
        host = parts[1]
        if parts[0] == "start":
            if open_ is not None:
                runs.append((_where(open_[0], own), open_[1], None, open_[0]))
            open_ = (host, at)
        elif open_ is not None and open_[0] == host:
            runs.append((_where(host, own), open_[1], at, host))
            open_ = None
    if open_ is not None:
        runs.append((_where(open_[0], own), open_[1], None, open_[0]))
    return runs


def _where(host: str, own: set[str]) -> str:
    return "own" if host in own else "borrowed"


def merge_runs(from_output: list[Run], seen: list[tuple[str, float]], own: set[str],
               origin: float) -> list[Run]:
    """The output's runs, with a cut run in front for each run squeue showed that the output
    lacks (its node in the order seen; its start the moment it was first seen)."""
    missing = len(seen) - len(from_output)
    if missing <= 0:
        return from_output
    extra: list[Run] = [(_where(node, own), at - origin, None, node) for node, at in seen[:missing]]
    return extra + from_output


def run_lab(settings: TwinSettings, log: Callable[[str], None], *, up: Callable[..., dict],
            build_wheels: Callable[[], None]) -> dict[str, Any]:
    """The workload in the lab; returns (and writes to ``lab.json``) the record of the run."""
    origin0 = time.time()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    jobs = model.twin_workload(settings.bursts, settings.seed)
    domains = sorted({j.domain for j in jobs})
    plan = labhosts.Plan.load(topology.STATE_DIR)
    if plan is None:
        _log_step(log, origin0, "bringing the lab up")
        up(settings.inventory, log=lambda text: _log_step(log, origin0, text))
        plan = labhosts.Plan.load(topology.STATE_DIR)
        assert plan is not None
    elif settings.run_site:
        _log_step(log, origin0, "the lab is up: building the wheelhouses again")
        build_wheels()
    if settings.run_site:
        _log_step(log, origin0, f"running playbooks/site.yml (output in {out / 'site.log'})")
        run_site(settings.inventory, out, lambda s: _log_step(log, origin0, s))
    names = {h.name for h in plan.hosts}
    heads = {d: f"{d}-head" for d in domains}
    missing = [h for h in heads.values() if h not in names]
    if missing:
        raise model.TwinError(f"the lab has no {', '.join(missing)}: the workload's domains are "
                              f"{', '.join(domains)}; bring up a lab with them (inventories/lab)")
    own = {d: {h for h in names if h.startswith(f"{d}-node")} for d in domains}
    shell = Shell(plan)
    watcher = Watcher()
    try:
        for d, head in heads.items():
            if scheduler_of(shell, head) is not Slurm:
                raise model.TwinError(f"domain {d} does not run Slurm: the twin workload is "
                                      "submitted with sbatch (use inventories/lab)")
        deployed = {}
        for d, head in heads.items():
            try:
                deployed[d] = yaml.safe_load(shell.run(head, f"cat {BROKER_CONFIG}")) or {}
                parse_policy(deployed[d].get("policy"), f"{head}:{BROKER_CONFIG} policy")
            except (yaml.YAMLError, ConfigError) as exc:
                raise model.TwinError(f"{head}: the broker's config cannot be read: {exc}") from None
        _log_step(log, origin0, "making sure no job, contract or borrowed node is left from before")
        reset(shell, heads, 180.0)
        rundir = f"/home/viocluster-twin/{time.strftime('%Y%m%d-%H%M%S')}"
        for head in heads.values():
            shell.run(head, f"mkdir -p {rundir} && printf '%s' {shlex.quote(JOB_SCRIPT)} > "
                            f"{rundir}/job.sh && chmod 755 {rundir}/job.sh")
        seen = Seen(shell, heads)
        for d in domains:
            watcher.every(0.5, lambda d=d: seen.poll(d))
        submitted: dict[tuple[str, int], float] = {}
        origin = time.time()
        _log_step(log, origin0, f"submitting {len(jobs)} jobs over {jobs[-1].submit:.0f} s "
                                f"(output in {rundir} on each head node)")
        i = 0
        while i < len(jobs):
            due = origin + jobs[i].submit
            time.sleep(max(0.0, due - time.time()))
            group = [j for j in jobs[i:] if j.submit <= jobs[i].submit + 0.05]
            i += len(group)
            for d in domains:
                mine = [j for j in group if j.domain == d]
                if not mine:
                    continue
                at = time.time()
                cmd = " && ".join(
                    f"sbatch --parsable -p phys,borrowed --open-mode=append -t 2 -J twin-{d}{j.index} "
                    f"-o {rundir}/{d}-{j.index}.out {rundir}/job.sh {j.runtime}" for j in mine)
                ids = shell.run(heads[d], cmd).split()
                if len(ids) != len(mine):
                    raise model.TwinError(f"{heads[d]}: sbatch gave {len(ids)} job id(s) for "
                                          f"{len(mine)} job(s): {' '.join(ids)}")
                with seen.lock:
                    for j, job_id in zip(mine, ids):
                        seen.ids[d][job_id.split(";")[0]] = j.index
                        seen.left[d].add(job_id.split(";")[0])
                for j in mine:
                    submitted[(d, j.index)] = at - origin
            if i % 10 < len(group) or i == len(jobs):
                _log_step(log, origin0, f"{i} of {len(jobs)} jobs submitted; {seen.queued()} in "
                                        "the queues")
        _wait("every job of the workload to finish", lambda: seen.queued() == 0,
              settings.finish_timeout_s, 1.0)
        _log_step(log, origin0, "every job has finished; waiting for the brokers to close their "
                                "contracts")
        _wait("the brokers to close their contracts",
              lambda: not any(_contracts(shell, h, all_=False) for h in heads.values()), 180.0, 1.0)
        watcher.close()
        outcomes = []
        for d in domains:
            text = shell.run(heads[d], f"cd {rundir} && for f in {d}-*.out; do echo \"== $f\"; "
                                       "cat \"$f\"; done", check=False)
            files: dict[int, list[str]] = {}
            current: list[str] | None = None
            for line in text.splitlines():
                if line.startswith("== "):
                    name = line[3:].removeprefix(f"{d}-").removesuffix(".out")
                    # no output at all leaves the glob itself ("a-*.out"): not a job's file
                    current = files.setdefault(int(name), []) if name.isdigit() else None
                elif current is not None:
                    current.append(line)
            for j in (j for j in jobs if j.domain == d):
                runs = merge_runs(_runs_from_output("\n".join(files.get(j.index, [])), own[d], origin),
                                  seen.runs.get((d, j.index), []), own[d], origin)
                outcomes.append(model.JobOutcome(d, j.index, submitted[(d, j.index)], j.runtime,
                                                 [r[:3] for r in runs], [r[3] for r in runs]))
        contracts = {d: [c for c in _contracts(shell, h) if c.get("created_at", 0) >= origin - 1]
                     for d, h in heads.items()}
    finally:
        watcher.close()
        shell.close()
    record = {
        "origin": origin, "seed": settings.seed, "rundir": rundir,
        "bursts": [asdict(b) for b in settings.bursts],
        "capacities": {d: len(own[d]) for d in domains},
        "interval_s": {d: deployed[d].get("interval_s") for d in domains},
        "policies": {d: deployed[d].get("policy") for d in domains},
        "jobs": [asdict(o) for o in outcomes],
        "contracts": contracts,
        "requeue_delays_s": sorted(seen.requeue_delays.values()),
    }
    (out / "lab.json").write_text(json.dumps(record, indent=1))
    return record


def first_use(record: dict[str, Any], outcomes: list[model.JobOutcome]) -> list[float]:
    """Per borrowed contract, seconds from its agreement to the first run of the borrower's
    on one of its VMs: when the borrower could use the node (the VM booted, its slurmd joined,
    and Slurm's next pass started a waiting job there)."""
    out = []
    for d, items in record["contracts"].items():
        for c in items:
            agreed = model.transition(c, "agreed")
            nodes = set(c.get("nodes") or [])
            if c.get("role") != "borrower" or agreed is None or not nodes:
                continue
            starts = [run[1] + float(record["origin"]) for o in outcomes if o.domain == d
                      for run, host in zip(o.runs, o.hosts) if host in nodes]
            if starts:
                out.append(min(starts) - agreed)
    return out


def lab_trades(record: dict[str, Any]) -> list[model.Trade]:
    """The contracts each domain agreed as the borrower, from its own broker's log."""
    origin = float(record["origin"])
    trades = []
    for d, items in record["contracts"].items():
        for c in items:
            agreed = model.transition(c, "agreed")
            if c.get("role") == "borrower" and agreed is not None:
                trades.append(model.Trade(d, str(c.get("peer")), agreed - origin,
                                          len(c.get("hosts") or [])))
    return sorted(trades, key=lambda t: t.at)


def _outcomes(record: dict[str, Any]) -> list[model.JobOutcome]:
    try:
        return [model.JobOutcome(o["domain"], int(o["index"]), float(o["submit"]), int(o["runtime"]),
                                 [(r[0], float(r[1]), None if r[2] is None else float(r[2]))
                                  for r in o["runs"]], [str(h) for h in o.get("hosts", [])])
                for o in record["jobs"]]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise model.TwinError(f"the lab record's jobs are not as `viocluster lab twin` writes "
                              f"them ({exc!r}): run the twin again") from None


def replay(record: dict[str, Any], out: Path) -> tuple[model.Comparison, model.Costs, str]:
    """The simulator on the lab's record; writes twin.txt, twin.json and jobs.csv to ``out``."""
    for key in ("origin", "capacities", "interval_s", "policies", "jobs", "contracts"):
        if key not in record:
            raise model.TwinError(f"the lab record has no {key!r}: it is not a record of "
                                  "`viocluster lab twin`; run the twin again")
    lab = _outcomes(record)
    unfinished = [f"{o.domain}-{o.index}" for o in lab if not o.finished]
    if unfinished:
        raise model.TwinError(f"job(s) {', '.join(unfinished)} have no finished run in the lab's "
                              "record: the lab run is incomplete, run it again")
    try:
        intervals = {float(v) for v in record["interval_s"].values() if v is not None}
        capacities = {str(d): int(n) for d, n in record["capacities"].items()}
        trades = lab_trades(record)
        uses = first_use(record, lab)
        policy_data = dict(record["policies"])
        contracts = {d: list(items) for d, items in record["contracts"].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise model.TwinError(f"the lab record is not as `viocluster lab twin` writes it "
                              f"({exc!r}): run the twin again") from None
    if len(intervals) != 1:
        raise model.TwinError(f"the brokers' intervals differ or are unknown ({record['interval_s']}): "
                              "the simulator runs one interval for all domains")
    costs = model.measure_costs(intervals.pop(), contracts, lab,
                                record.get("requeue_delays_s", []), uses)
    policies = {d: parse_policy(p, f"domain {d}'s deployed policy") for d, p in policy_data.items()}
    sim = model.simulate(lab, capacities, policies, costs, epoch=float(record["origin"]))
    comparison = model.compare(lab, trades, sim.outcomes, sim.trades, list(capacities))
    text = model.format_comparison(comparison, costs)
    if sim.violations:
        text += "\n\nthe simulator's invariant check found: " + "; ".join(sim.violations[:5])
    out.mkdir(parents=True, exist_ok=True)
    (out / "twin.txt").write_text(text + "\n")
    (out / "twin.json").write_text(json.dumps({
        **comparison.as_dict(), "costs": asdict(costs),
        "lab_trades": [asdict(t) for t in trades],
        "sim_trades": [asdict(t) for t in sim.trades]}, indent=1))
    with open(out / "jobs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "domain", "job", "submit_s", "runtime_s", "runs", "wait_s", "response_s"])
        for label, items in (("lab", lab), ("sim", sim.outcomes)):
            for o in sorted(items, key=lambda o: (o.domain, o.index)):
                w.writerow([label, o.domain, o.index, f"{o.submit:.2f}", o.runtime,
                            ";".join(f"{r[0]}@{r[1]:.1f}-{'cut' if r[2] is None else f'{r[2]:.1f}'}"
                                     for r in o.runs),
                            f"{o.wait:.2f}" if o.finished else "", f"{o.response:.2f}" if o.finished else ""])
    return comparison, costs, text


def load_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise model.TwinError(f"cannot read the lab record {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise model.TwinError(f"{path} is not JSON ({exc}): give a lab.json that "
                              "`viocluster lab twin` wrote") from None
    if not isinstance(record, dict):
        raise model.TwinError(f"{path} is not a lab record of `viocluster lab twin`")
    return record

