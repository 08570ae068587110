#!/usr/bin/env python3
"""Twin benchmark: one workload in the live lab and in the simulator, side by side.

The workload (broker/simulator/twin.py: 46 one-node jobs in five bursts over about ten minutes,
on Slurm domains a and b of inventories/lab) is submitted to the lab at its planned times; the
brokers trade as they would. The simulator then replays the very submit times, with the costs
this run measured (the brokers' interval, a VM's boot and halt, the slowdown of a job on a VM)
and the policies as deployed. Printed: per domain, trades, VMs, preemptions, jobs finished on
a VM, mean wait and response, lab beside simulator; per job, whether both placed its finishing
run alike; and the checks (mean wait within 25 %, trades and preemptions within one).

Run as root: python bench/bench_twin.py [-i INVENTORY] [--seed N] [--site] [--replay out/twin/lab.json]
The lab is brought up when it is down (and site.yml then run); it is left up. --replay runs only
the simulator and the comparison on a recorded lab run (no root, no lab).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker.errors import UserError  # noqa: E402
from broker.lab import hosts as labhosts  # noqa: E402
from broker.lab import topology  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--inventory", type=Path, default=REPO / "inventories" / "lab")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--site", action="store_true", help="run site.yml first even if the lab is up")
    p.add_argument("--out", type=Path, default=REPO / "out" / "twin")
    p.add_argument("--replay", type=Path, metavar="LAB_JSON",
                   help="only the simulator and the comparison, on a recorded lab.json")
    args = p.parse_args()
    from broker.lab.cli import build_wheels, up
    from broker.lab.twin import TwinSettings, load_record, replay, run_lab

    try:
        if args.replay is not None:
            record = load_record(args.replay)
        else:
            if os.geteuid() != 0:
                print("bench_twin: run as root (the lab), or give --replay", file=sys.stderr)
                return 2
            lab_was_up = labhosts.Plan.load(topology.STATE_DIR) is not None
            t0 = time.monotonic()
            record = run_lab(TwinSettings(inventory=args.inventory, out=args.out, seed=args.seed,
                                          run_site=args.site or not lab_was_up),
                             log=lambda line: print(line, flush=True), up=up,
                             build_wheels=build_wheels)
            print(f"lab run: {time.monotonic() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")
        t0 = time.perf_counter()
        _comparison, _costs, text = replay(record, args.out)
        print(f"simulator and comparison: {time.perf_counter() - t0:.2f} s")
    except UserError as exc:
        print(f"bench_twin: {exc}", file=sys.stderr)
        return 1
    print()
    print(text)
    print(f"\n(in {args.out}: twin.txt, twin.json, jobs.csv, lab.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
