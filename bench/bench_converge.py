#!/usr/bin/env python3
"""Converge benchmark: how long `ansible-playbook playbooks/site.yml` takes on the 6-host lab.

  first converge     site.yml on hosts fresh from `viocluster lab up` (root filesystem cached)
  no-change converge site.yml again on the converged lab, --runs times (it must change nothing)

Each run's wall time, the recap's ok/changed/failed totals and the machine's load are printed;
the full output of every run goes to --log-dir. Nothing is asserted on time: figures go to
docs/performance.md, "Converge", with this command.

Run as root: python bench/bench_converge.py [--runs 3] [--no-first]
--no-first skips the first converge and measures the no-change runs on the lab as it is (it
must be up and converged). Without it the lab is taken down and brought up again first. The
lab is left up.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
                   r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)", re.M)


@dataclass
class Run:
    label: str
    seconds: float
    ok: int
    changed: int
    failed: int
    unreachable: int
    load1: float


def viocluster(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "viocluster"), *args], check=True,
                   cwd=REPO, stdout=subprocess.DEVNULL)


def converge(label: str, inventory: Path, log: Path, extra: list[str]) -> Run:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    load1 = os.getloadavg()[0]
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(["ansible-playbook", "-i", str(inventory), "playbooks/site.yml",
                               *extra], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                              check=False)
    seconds = time.monotonic() - t0
    text = log.read_text(errors="replace")
    totals = {"ok": 0, "changed": 0, "failed": 0, "unreachable": 0}
    for m in RECAP.finditer(text):
        for key in totals:
            totals[key] += int(m.group(key))
    if proc.returncode != 0 and not totals["failed"] and not totals["unreachable"]:
        totals["failed"] = 1  # died before its recap
    return Run(label, seconds, load1=load1, **totals)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-i", "--inventory", type=Path, default=REPO / "inventories" / "lab")
    ap.add_argument("--runs", type=int, default=3, help="no-change converges (default 3)")
    ap.add_argument("--no-first", action="store_true",
                    help="skip lab down/up and the first converge (the lab must be converged)")
    ap.add_argument("--log-dir", type=Path, default=REPO / "out" / "bench-converge")
    ap.add_argument("ansible_args", nargs="*", help="passed on to ansible-playbook (after --)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("needs root (the lab's nspawn hosts)")
    if args.runs < 0:
        ap.error("--runs must be 0 or more")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    if not args.no_first:
        print("lab down, then up (root filesystem cached after its first build) ...", flush=True)
        viocluster("lab", "down")
        t0 = time.monotonic()
        viocluster("lab", "up", "-i", str(args.inventory))
        print(f"  lab up in {time.monotonic() - t0:.1f} s", flush=True)
        runs.append(converge("first", args.inventory, args.log_dir / "first.log",
                             args.ansible_args))
        print(f"  first converge: {runs[-1].seconds:.1f} s", flush=True)
    for i in range(1, args.runs + 1):
        runs.append(converge(f"no-change {i}", args.inventory,
                             args.log_dir / f"no-change-{i}.log", args.ansible_args))
        print(f"  no-change converge {i}: {runs[-1].seconds:.1f} s", flush=True)
    print(f"\nsite.yml on {args.inventory.name} ({os.cpu_count()} cpus); logs in {args.log_dir}")
    print(f"{'run':<14}{'seconds':>9}{'ok':>6}{'changed':>9}{'failed':>8}{'unreach':>9}"
          f"{'load1':>7}")
    for r in runs:
        print(f"{r.label:<14}{r.seconds:>9.1f}{r.ok:>6}{r.changed:>9}{r.failed:>8}"
              f"{r.unreachable:>9}{r.load1:>7.2f}")
    again = [r.seconds for r in runs if r.label.startswith("no-change")]
    if again:
        print(f"no-change converge, median of {len(again)}: {statistics.median(again):.1f} s")
    bad = [r for r in runs if r.failed or r.unreachable or (r.label != "first" and r.changed)]
    for r in bad:
        print(f"note: {r.label} had changed={r.changed} failed={r.failed} "
              f"unreachable={r.unreachable}; see its log", file=sys.stderr)
    return 1 if any(r.failed or r.unreachable for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
