#!/usr/bin/env python3
"""Simulator benchmark: both real traces in full (CTC-SP2 77,222 jobs + OSC-Clust 36,097 jobs).

Prints wall seconds, jobs per second and peak memory (ru_maxrss of this process and of its
children) for:
  1. the sharing run alone, in this process (trace reading included);
  2. the whole command, `viocluster simulate --domain osc=OSC:57 --domain ctc=CTC:338`
     (sharing and no-sharing in two processes, summary, CSV and figures), in a subprocess.
OSC gets 57 node slots and CTC 338, as in the presets (see docs/simulator.md).
Skips, saying why, when the traces are absent (VIOCLUSTER_TRACES, default ../shared/traces).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker.simulator.engine import SimConfig, Simulation  # noqa: E402
from broker.simulator.presets import CTC, OSC, default_traces_dir  # noqa: E402
from broker.simulator.swf import read_swf  # noqa: E402
from broker.simulator.workload import from_trace  # noqa: E402


def mib(kb: int) -> float:
    return kb / 1024.0


def main() -> int:
    traces = default_traces_dir()
    absent = [n for n in (CTC, OSC) if not (traces / n).is_file()]
    if absent:
        print(f"SKIP: {', '.join(absent)} not in {traces}; set VIOCLUSTER_TRACES to the folder "
              "holding the Parallel Workloads Archive traces")
        return 0
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    workloads = [from_trace("osc", read_swf(traces / OSC), 57),
                 from_trace("ctc", read_swf(traces / CTC), 338)]
    t1 = time.perf_counter()
    sim = Simulation(workloads, config=SimConfig(sharing=True))
    result = sim.run()
    t2 = time.perf_counter()
    cpu = time.process_time() - cpu0
    jobs = sim.total_jobs
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts = ", ".join(f"{w.name} {len(w)}" for w in workloads)
    print(f"[1] sharing run, in process: {jobs} jobs ({counts})")
    print(f"    read traces {t1 - t0:.2f} s, simulate {t2 - t1:.2f} s, wall {t2 - t0:.2f} s, "
          f"{jobs / (t2 - t0):,.0f} jobs/s (simulation alone {jobs / (t2 - t1):,.0f} jobs/s), "
          f"{result.events} events")
    print(f"    CPU time {cpu:.2f} s (wall and CPU differ by the time other work held the cores)")
    print(f"    peak memory (ru_maxrss, self): {mib(self_rss):.0f} MiB")

    with tempfile.TemporaryDirectory(prefix="vsim-bench-") as out:
        exe = Path(sys.executable).parent / "viocluster"
        cmd = [str(exe), "simulate", "--domain", f"osc={traces / OSC}:57",
               "--domain", f"ctc={traces / CTC}:338", "--out", out]
        t3 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        t4 = time.perf_counter()
        if proc.returncode != 0:
            print(f"[2] viocluster simulate failed: {proc.stderr.strip()}")
            return 1
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("[2] viocluster simulate --domain osc=OSC:57 --domain ctc=CTC:338 (sharing + no "
          "sharing in two processes, summary, CSV, figures)")
    print(f"    wall {t4 - t3:.2f} s, {2 * jobs / (t4 - t3):,.0f} jobs/s over both runs")
    print(f"    peak memory (ru_maxrss, largest child): {mib(child_rss):.0f} MiB")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
