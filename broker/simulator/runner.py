"""Run a scenario with and without sharing (in two processes) and collect the results."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from broker.policy import DomainPolicy
from broker.simulator.engine import SimConfig, Simulation
from broker.simulator.invariants import InvariantReport, check_run
from broker.simulator.metrics import daily_response, jobs_csv_text, run_summary, series_rows
from broker.simulator.workload import Workload


@dataclass(slots=True)
class RunOutput:
    sharing: bool
    summary: dict[str, dict]
    series: dict[str, list[tuple]]
    wall_s: float
    jobs: int
    events: int
    daily: dict[str, dict[int, list[float]]]  # domain -> submit day -> [jobs, sum response]
    jobs_csv: str = ""  # this run's jobs.csv lines (metrics.JOB_FIELDS after run and domain)
    invariants: InvariantReport | None = None  # with SimConfig.check_invariants

    @property
    def label(self) -> str:
        return "sharing" if self.sharing else "no_sharing"

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s if self.wall_s > 0 else 0.0


def run_once(
    workloads: Sequence[Workload],
    policies: Sequence[DomainPolicy],
    config: SimConfig,
    progress: Callable[[int], None] | None = None,
) -> RunOutput:
    t0 = time.perf_counter()
    sim = Simulation(workloads, policies, config, progress=progress)
    result = sim.run()
    wall = time.perf_counter() - t0
    summary = run_summary(result)
    label = "sharing" if config.sharing else "no_sharing"
    report = None
    if sim.log is not None:
        report = check_run(result, sim.log, config, summary)
    return RunOutput(config.sharing, summary, series_rows(result), wall,
                     sim.total_jobs, result.events,
                     {d.name: daily_response(d) for d in result.domains},
                     "".join(jobs_csv_text(label, d) for d in result.domains), report)


def _child(conn, workloads, policies, config) -> None:
    try:
        conn.send(("ok", run_once(workloads, policies, config)))
    except BaseException as exc:  # pragma: no cover - reported by the parent
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def run_scenario(
    workloads: Sequence[Workload],
    policies: Sequence[DomainPolicy],
    config: SimConfig,
    both: bool = True,
    progress: Callable[[int], None] | None = None,
    parallel: bool = True,
    meanwhile: Callable[[], object] | None = None,
) -> list[RunOutput]:
    """The sharing run (unless ``config.sharing`` is False) and, if ``both``, the no-sharing one.

    With ``parallel`` the two runs go to two processes (two cores, two runs): with ``progress``
    this process runs the sharing one (the one the progress reports) and a forked child the
    no-sharing one; without, the child takes the sharing run, the longer, and this process,
    once its shorter run is done, calls ``meanwhile`` (e.g. an import the outputs need) while
    the child finishes.
    """
    if not config.sharing:
        return [run_once(workloads, policies, config, progress)]
    alone = replace(config, sharing=False)
    if not both:
        return [run_once(workloads, policies, config, progress)]
    if parallel and "fork" in mp.get_all_start_methods():
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        there, here = (alone, config) if progress is not None else (config, alone)
        proc = ctx.Process(target=_child, args=(child, workloads, policies, there))
        proc.start()
        child.close()
        mine = run_once(workloads, policies, here, progress)
        if meanwhile is not None:
            meanwhile()
        status, payload = parent.recv()
        proc.join()
        if status != "ok":
            raise RuntimeError(f"{'no-' if there is alone else ''}sharing run failed: {payload}")
        return [mine, payload] if here is config else [payload, mine]
    return [run_once(workloads, policies, config, progress),
            run_once(workloads, policies, alone)]
