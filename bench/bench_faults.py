#!/usr/bin/env python3
"""Fault benchmark: per fault, how long from the fault to each part of the recovery.

  contracts_ended_s  both brokers hold the trade's contract ended
  node_gone_s        the borrowed VM's node is gone from the borrower's Slurm
  host_back_s        the lent host is back in its owner's Slurm, not drained
  job_elsewhere_s    the job that ran on the VM has finished on another node

Each drill (broker/lab/drill.py) has A borrow a VM of B with a job of A's on it, makes the
fault and polls both sides every half second; it also checks that no job was lost, run twice
at once or had its output corrupted. Nothing is asserted on time: figures go to
docs/performance.md, "Faults", with this command.

Run as root on the lab that is up and converged (`make demo` leaves it so):
  python bench/bench_faults.py [--rounds 2] [--faults lender-crash,partition-long]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker.errors import UserError  # noqa: E402
from broker.lab import hosts as labhosts  # noqa: E402
from broker.lab import topology  # noqa: E402
from broker.lab.drill import Drill, catalogue  # noqa: E402
from broker.lab.faultcheck import FIGURES  # noqa: E402


def main() -> int:
    known = catalogue()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--faults", default="lender-crash,partition-long",
                    help=f"comma-separated, from {','.join(known)}")
    ap.add_argument("--timeout", type=float, default=180.0, help="per drill, seconds")
    args = ap.parse_args()
    names = [n for n in args.faults.split(",") if n]
    unknown = sorted(set(names) - set(known))
    if unknown:
        ap.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if os.geteuid() != 0:
        ap.error("needs root (the lab)")
    plan = labhosts.Plan.load(topology.STATE_DIR)
    if plan is None:
        ap.error("the lab is not up: `make demo` (or `viocluster lab up` and site.yml) first")
    rows: dict[str, list[dict[str, float | None]]] = {n: [] for n in names}
    failures = 0
    for rnd in range(1, args.rounds + 1):
        for name in names:
            f = known[name]
            drill = Drill(plan, log=lambda s: print(f"  {s}", flush=True), timeout_s=args.timeout)
            print(f"round {rnd}: {name}: {f.name}", flush=True)
            try:
                result = drill.run(f)
            except UserError as err:
                print(f"  failed: {err}", flush=True)
                failures += 1
                continue
            finally:
                drill.close()
            rows[name].append(result.figures)
            if any(v is not None for v in result.figures.values()):
                print("  " + ", ".join(f"{k} {'-' if v is None else f'{v:.1f}'}"
                                       for k, v in result.figures.items()), flush=True)
            else:
                print("  the trade was not ended by the fault (none was to be)", flush=True)
            for problem in result.problems:
                print(f"  PROBLEM: {problem}", flush=True)
                failures += 1
    print(f"\nfault recovery, median of the rounds (s after the fault; load1 now "
          f"{os.getloadavg()[0]:.2f})")
    print(f"{'fault':<18}" + "".join(f"{k:>19}" for k in FIGURES))
    for name, results in rows.items():
        cells = []
        for key in FIGURES:
            values = [r[key] for r in results if r.get(key) is not None]
            cells.append(f"{statistics.median(values):>19.1f}" if values else f"{'-':>19}")
        print(f"{name:<18}" + "".join(cells))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
