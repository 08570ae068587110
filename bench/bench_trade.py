#!/usr/bin/env python3
"""Trade benchmark: the demo's live trade between two lab domains, N times, with figures.

Each round is `viocluster lab demo` without site.yml (the first round may run it): a burst on
domain A, broker A borrows a machine of domain B (a UML VM booted as B's peer account joins A's
virtual network and Slurm), a burst on B, B reclaims it. The figures come from the brokers'
contract logs (SQLite, each transition timed) and from polling the job queue and the VM's
process:
  ask -> agreed            broker A's request until both sides persisted the agreement
  agreed -> VM idle        borrow.yml through ansible-runner, the VM's boot, its slurmd joining
  reclaim -> job requeued  B's reclaim until A's job is off the VM (node down in Slurm)
  reclaim -> VM gone       B's reclaim until the VM's process is gone from B's host
  reclaim -> closed        B's reclaim until its contract is closed (reclaim.yml included)

Run as root: python bench/bench_trade.py [-i INVENTORY] [--rounds 3] [--site] [--borrower a --lender b]
The pair is any two domains of the lab, each on Slurm or OpenPBS (-i inventories/lab-pbs
--borrower c --lender b: the PBS domain borrows from a Slurm domain; --borrower b --lender c:
the reverse). The lab is
brought up when it is down (and site.yml is then run); it is left up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker.errors import UserError  # noqa: E402
from broker.lab import hosts as labhosts  # noqa: E402
from broker.lab import topology  # noqa: E402
from broker.lab.cli import build_wheels, up  # noqa: E402
from broker.lab.demo import TARGETS, DemoSettings, demo  # noqa: E402

KEYS = ("ask_to_agreed_s", "agreed_to_idle_s", "reclaim_to_requeued_s", "reclaim_to_vm_gone_s",
        "reclaim_to_closed_s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--inventory", type=Path, default=REPO / "inventories" / "lab",
                   help="lab inventory (default inventories/lab; inventories/lab-pbs for the PBS domain c)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--site", action="store_true", help="run site.yml before the first round")
    p.add_argument("--job-seconds", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench-trade")
    p.add_argument("--borrower", default="a", help="the domain that borrows (default a)")
    p.add_argument("--lender", default="b", help="the domain that lends and reclaims (default b)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_trade: run as root (the lab)", file=sys.stderr)
        return 2
    lab_was_up = labhosts.Plan.load(topology.STATE_DIR) is not None
    rounds: list[dict] = []
    try:
        for i in range(args.rounds):
            settings = DemoSettings(inventory=args.inventory, out=args.out / f"round{i + 1}",
                                    jobs_a=10, jobs_b=3, job_seconds=args.job_seconds,
                                    run_site=(i == 0 and (args.site or not lab_was_up)),
                                    borrower=args.borrower, lender=args.lender)
            result = demo(settings, log=lambda _line: None, up=up, build_wheels=build_wheels)
            load = os.getloadavg()[0]
            rounds.append({"load": load, **result["figures"]})
            if i == 0:
                print(f"{args.borrower} ({result['schedulers'][args.borrower]}) borrows from "
                      f"{args.lender} ({result['schedulers'][args.lender]})", flush=True)
            print(f"round {i + 1}: load {load:4.1f}  " + "  ".join(
                f"{k.removesuffix('_s')} {result['figures'][k]:.2f} s" if result["figures"][k] is not None
                else f"{k.removesuffix('_s')} -" for k in KEYS), flush=True)
    except UserError as exc:
        print(f"bench_trade: {exc}", file=sys.stderr)
        return 1
    print()
    print(f"median of {len(rounds)} round(s):")
    for key in KEYS:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if not values:
            print(f"  {key:24} not measured")
            continue
        target = TARGETS.get(key)
        mark = "" if target is None else f"   (target <= {target:g} s: {'met' if statistics.median(values) <= target else 'MISSED'})"
        print(f"  {key:24} {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f}){mark}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rounds.json").write_text(json.dumps({"rounds": rounds, "at": time.time()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
