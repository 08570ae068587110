#!/usr/bin/env python3
"""Simulator at scale: a generated workload of 1,000,000 jobs over 8 domains, sharing on.

The domains (broker.simulator.synthetic.generated_workloads) have 256 node slots each, base
loads spread from 0.3 to 0.7, every other one with bursts (6 h at 6x, every 5 days on
average); the span is long enough for 1,000,000 jobs, which are then cut to exactly that many
(the first jobs of each domain in the same proportion). Paper settings otherwise (broker every
hour, boot 40 s, halt 16 s, 15 % slower on VMs, half the idle nodes lent, immediate
reclamation). Prints the time to generate, to simulate (in this process) and the peak memory
(ru_maxrss) of the process; targets: simulation <= 30 s, peak <= 1 GiB.

    nice -n 19 python bench/bench_simulator_scale.py [--jobs N] [--domains D] [--policy FILE]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker.policy import DomainPolicy, load_policy  # noqa: E402
from broker.simulator.engine import SimConfig, Simulation  # noqa: E402
from broker.simulator.metrics import run_summary  # noqa: E402
from broker.simulator.synthetic import generated_workloads  # noqa: E402
from broker.simulator.workload import Workload  # noqa: E402


def cut(w: Workload, n: int) -> Workload:
    return Workload(w.name, w.capacity, w.submit[:n], w.runtime[:n], w.nodes[:n],
                    w.estimate[:n], w.unix_start, w.source, w.job_ids[:n])


def workloads(jobs: int, domains: int, capacity: int, seed: int) -> list[Workload]:
    days = 60.0
    while True:
        ws = generated_workloads(domains, capacity, days, seed, load=(0.3, 0.7))
        total = sum(len(w) for w in ws)
        if total >= jobs:
            break
        days *= 1.15 * jobs / total
    share = jobs / total
    counts = [int(len(w) * share) for w in ws]
    counts[-1] += jobs - sum(counts)
    return [cut(w, n) for w, n in zip(ws, counts)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--domains", type=int, default=8)
    ap.add_argument("--capacity", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policy", help="a policy file for every domain (default: the paper's)")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")
    t0 = time.perf_counter()
    ws = workloads(args.jobs, args.domains, args.capacity, args.seed)
    t1 = time.perf_counter()
    span = max(w.submit[-1] for w in ws) / 86400
    print(f"generated {sum(len(w) for w in ws):,} jobs, {len(ws)} domains of {args.capacity} "
          f"slots, {span:.0f} days, in {t1 - t0:.2f} s")
    policy = load_policy(args.policy) if args.policy else DomainPolicy()
    cpu0 = time.process_time()
    t2 = time.perf_counter()
    sim = Simulation(ws, [policy] * len(ws), SimConfig(sharing=True))
    result = sim.run()
    t3 = time.perf_counter()
    summary = run_summary(result)
    t4 = time.perf_counter()
    cpu = time.process_time() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"simulate (sharing): {t3 - t2:.2f} s wall, {cpu:.2f} s CPU, "
          f"{sim.total_jobs / (t3 - t2):,.0f} jobs/s, {result.events:,} events; summary "
          f"{t4 - t3:.2f} s")
    borrowed = sum(s["borrowed_node_hours"] for s in summary.values())
    pre = sum(s["preemptions"] for s in summary.values())
    print(f"traded: {borrowed:,.0f} node-hours borrowed, {pre:,} preemptions")
    print(f"peak memory (ru_maxrss): {rss:.0f} MiB")
    print(f"targets: simulate <= 30 s: {'met' if t3 - t2 <= 30 else 'NOT met'}; "
          f"peak <= 1024 MiB: {'met' if rss <= 1024 else 'NOT met'}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
