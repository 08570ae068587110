"""The engine's EASY scheduler against a plain reference EASY, on workloads full of ties.

The reference rescans everything at every event time: it frees the nodes of every job that
ended, queues every job that arrived, starts jobs in queue order while they fit, then gives the
first that does not fit a reservation at its shadow time (sorting the running jobs by estimated
end and adding up their nodes; every job ending at that same moment frees its nodes then) and
backfills later jobs that fit now and either end by the shadow time or use only the extra
nodes. Ties (same submit times, run times, sizes) are where a shortcut would show.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import broker.simulator.engine as engine
from broker.simulator.engine import SimConfig, Simulation
from broker.simulator.workload import Workload

Job = tuple[float, float, int, float]  # submit, run time, nodes, estimate (>= run time)


def reference_easy(capacity: int, jobs: list[Job]) -> list[float]:
    """Start time of every job under FCFS + EASY backfilling, by full rescans."""
    order = sorted(range(len(jobs)), key=lambda j: (jobs[j][0], j))
    start = [-1.0] * len(jobs)
    running: dict[int, tuple[float, float]] = {}  # job -> (real end, estimated end)
    queue: list[int] = []
    arrived = 0
    while arrived < len(order) or queue or running:
        times = [end for end, _ in running.values()]
        if arrived < len(order):
            times.append(jobs[order[arrived]][0])
        now = min(times)
        for j in [j for j, (end, _) in running.items() if end <= now]:
            del running[j]
        while arrived < len(order) and jobs[order[arrived]][0] <= now:
            queue.append(order[arrived])
            arrived += 1
        free = capacity - sum(jobs[j][2] for j in running)

        def begin(j: int) -> None:
            nonlocal free
            start[j] = now
            running[j] = (now + jobs[j][1], now + jobs[j][3])
            free -= jobs[j][2]
            queue.remove(j)

        while queue and jobs[queue[0]][2] <= free:
            begin(queue[0])
        if not queue:
            continue
        head = jobs[queue[0]][2]
        ends = sorted({est for _, est in running.values()})
        shadow, extra = None, 0
        for t in ends:
            at_t = free + sum(jobs[j][2] for j, (_, est) in running.items() if est <= t)
            if at_t >= head:
                shadow, extra = t, at_t - head
                break
        assert shadow is not None  # every job fits the machine
        for j in list(queue[1:]):
            size, est = jobs[j][2], jobs[j][3]
            if size > free:
                continue
            if now + est <= shadow:
                begin(j)
            elif size <= extra:
                extra -= size
                begin(j)
    return start


def engine_starts(capacity: int, jobs: list[Job]) -> list[float]:
    order = sorted(range(len(jobs)), key=lambda j: (jobs[j][0], j))
    w = Workload("x", capacity, submit=[jobs[j][0] for j in order],
                 runtime=[jobs[j][1] for j in order], nodes=[jobs[j][2] for j in order],
                 estimate=[jobs[j][3] for j in order])
    result = Simulation([w], config=SimConfig(sharing=False)).run()
    starts = [-1.0] * len(jobs)
    for k, j in enumerate(order):
        starts[j] = result.domains[0].start[k]
    return starts


def tied_jobs(rng: random.Random, capacity: int, n: int) -> list[Job]:
    """Few distinct submit times, run times and sizes: many jobs share each."""
    submits = sorted(rng.choice((0, 0, 10, 10, 30, 60, 100)) + 100 * (k // 8) for k in range(n))
    jobs = []
    for s in submits:
        run = float(rng.choice((0, 10, 20, 20, 30, 50)))
        est = run + rng.choice((0, 0, 10, 20))
        size = rng.choice((1, 1, 2, 2, 3, capacity // 2, capacity))
        jobs.append((float(s), run, size, float(est)))
    return jobs


@pytest.mark.parametrize("vector_min", [10**9, 2])
@pytest.mark.parametrize("seed", range(40))
def test_seeded_tied_workloads_start_every_job_as_the_reference(seed, vector_min, monkeypatch):
    monkeypatch.setattr(engine, "VECTOR_MIN", vector_min)  # plain loop, then the numpy scan
    rng = random.Random(seed)
    capacity = rng.choice((4, 6, 8, 16))
    jobs = tied_jobs(rng, capacity, rng.randint(20, 160))
    assert engine_starts(capacity, jobs) == reference_easy(capacity, jobs)


def test_jobs_ending_at_the_shadow_time_all_count_for_the_extra_nodes():
    # 4 nodes: A, B, C (1 node each) run until 100, one node is free. D (2 nodes) waits: the
    # first of A, B, C already makes room for it at 100 (shadow 100), and all three end then,
    # so 1 + 3 - 2 = 2 nodes are extra. E (1 node, 500 s) backfills at once on one of them;
    # counting only the first job ending at 100 would leave no extra node and E would wait.
    jobs = [(0.0, 100.0, 1, 100.0), (0.0, 100.0, 1, 100.0), (0.0, 100.0, 1, 100.0),
            (1.0, 10.0, 2, 10.0), (2.0, 500.0, 1, 500.0)]
    assert reference_easy(4, jobs) == [0.0, 0.0, 0.0, 100.0, 2.0]
    assert engine_starts(4, jobs) == [0.0, 0.0, 0.0, 100.0, 2.0]


tie_job = st.tuples(
    st.sampled_from((0.0, 0.0, 5.0, 10.0, 20.0)),  # submit
    st.sampled_from((0.0, 10.0, 10.0, 20.0, 40.0)),  # run time
    st.integers(1, 6),  # nodes (capacity 6)
    st.sampled_from((0.0, 0.0, 10.0, 30.0)),  # estimate - run time
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tie_job, min_size=1, max_size=40))
def test_generated_tied_workloads_start_every_job_as_the_reference(raw):
    jobs = [(s, r, n, r + over) for s, r, n, over in raw]
    assert engine_starts(6, jobs) == reference_easy(6, jobs)


def test_new_arrivals_shortcut_matches_a_full_pass_with_sharing(monkeypatch):
    """When nothing was freed only new jobs are tried; a full pass every time must agree,
    including a new job that may not take own nodes (reservation) but fits on idle VMs."""
    from broker.simulator.presets import demo_workloads

    def once(full: bool) -> list[list[float]]:
        if full:
            monkeypatch.setattr(Simulation, "schedule",
                                lambda self, d, now: (setattr(d, "dirty", False),
                                                      self._full_pass(d, now),
                                                      d.new_jobs.clear()))
        result = Simulation(demo_workloads(3), config=SimConfig(interval=1800)).run()
        return [d.start for d in result.domains]

    assert once(False) == once(True)
