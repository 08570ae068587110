"""``viocluster simulate``: replay traces (or the built-in workload) with and without sharing."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from broker.errors import UserError
from broker.policy import DomainPolicy, load_policy
from broker.simulator.engine import SimConfig
from broker.simulator.metrics import JOB_FIELDS
from broker.simulator.presets import PRESETS, preset_workloads
from broker.simulator.swf import read_swf
from broker.simulator.workload import LEFT_OUT_REASONS, Workload, from_trace

_DOMAIN = re.compile(
    r"^(?P<name>[A-Za-z][A-Za-z0-9_-]*)=(?P<trace>.+?)(?::(?P<cap>\d+))?"
    r"(?:@(?P<d0>\d+(?:\.\d+)?)-(?P<d1>\d+(?:\.\d+)?))?$"
)
DOMAIN_FORMAT = "NAME=TRACE[:CAPACITY][@FROM_DAY-TO_DAY], e.g. osc=OSC-Clust.swf.gz:57"


class UsageError(UserError):
    """A command-line value is wrong."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="trace-driven simulation of domains trading nodes",
        description="Replay one SWF trace per domain (or a preset) with and without sharing; "
        "write summary.json, series.csv, jobs.csv and figures to --out.",
    )
    p.add_argument("--domain", action="append", default=[], metavar="NAME=TRACE[:CAPACITY]",
                   help=f"a domain: {DOMAIN_FORMAT} (repeat for each domain)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named scenario instead of "
                   "--domain: demo (built-in workload), osc-ctc, osc-osc, ctc-ctc")
    p.add_argument("--traces", type=Path, help="folder of the real traces for the presets "
                   "(default: $VIOCLUSTER_TRACES, else ../shared/traces beside the repository)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--policy", action="append", default=[], metavar="[NAME=]FILE",
                   help="YAML policy for every domain, or for domain NAME")
    p.add_argument("--interval", type=float, default=3600.0, help="broker period, s (3600)")
    p.add_argument("--boot-delay", type=float, default=40.0, help="VM boot, s (40)")
    p.add_argument("--halt-delay", type=float, default=16.0, help="VM halt, s (16)")
    p.add_argument("--requeue-delay", type=float, default=0.0,
                   help="s a preempted job waits before it may start again (0; Slurm: about 10)")
    p.add_argument("--slowdown", type=float, default=0.15,
                   help="extra run time of jobs on VMs, fraction (0.15)")
    p.add_argument("--no-sharing", action="store_true", help="only the run without sharing")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic workload (1)")
    p.add_argument("--serial", action="store_true",
                   help="run sharing and no-sharing one after the other, not in two processes")
    p.add_argument("--strict", action="store_true",
                   help="refuse a trace with a job that cannot be replayed (no processor count, "
                   "no submit time) instead of leaving such jobs out and counting them")
    p.add_argument("--include-cancelled", action="store_true",
                   help="replay jobs cancelled before they started (run time -1) as 0-second "
                   "jobs; by default they are left out of the replay and the metrics")
    p.add_argument("--check-invariants", action="store_true",
                   help="log every run and check it (no start before submit, capacity, no job "
                   "across own and borrowed nodes, every job ends once, jobs.csv and the "
                   "summary add up); the first violation is named and the exit status is 1")
    p.add_argument("--paper-figure", type=int, choices=(5, 6, 7),
                   help="which of the paper's completion-time figures the run stands for: names "
                   "figN_completion.png (default: the preset's, else 5)")
    p.set_defaults(func=main)


def _parse_domain(text: str, strict: bool = False, include_cancelled: bool = False) -> Workload:
    m = _DOMAIN.match(text)
    if not m:
        raise UsageError(f"--domain {text!r}: expected {DOMAIN_FORMAT}")
    cap = int(m["cap"]) if m["cap"] else None
    d0 = float(m["d0"]) if m["d0"] else None
    d1 = float(m["d1"]) if m["d1"] else None
    if d0 is not None and d1 is not None and d1 <= d0:
        raise UsageError(f"--domain {text!r}: the section must end after it starts")
    w = from_trace(m["name"], read_swf(m["trace"]), cap, d0, d1, strict=strict,
                   include_cancelled=include_cancelled)
    if len(w) == 0:
        left = _left_out_text(w)
        raise UsageError(f"--domain {text!r}: no job to replay in that trace or section"
                         + (f" (left out: {left})" if left else ""))
    return w


def _left_out_text(w: Workload) -> str:
    """``3 cancelled, 1 no_processors``: the jobs of ``w``'s trace it does not replay."""
    return ", ".join(f"{n} {reason}" for reason, n in w.left_out.items() if n)


def _policies(args: argparse.Namespace, names: list[str]) -> list[DomainPolicy]:
    common = DomainPolicy()
    own: dict[str, DomainPolicy] = {}
    for item in args.policy:
        name, sep, path = item.partition("=")
        if sep and name in names:
            own[name] = load_policy(path)
        elif sep and not Path(item).exists():
            raise UsageError(f"--policy {item!r}: no domain named {name!r} "
                             f"(domains: {', '.join(names)})")
        else:
            common = load_policy(item)
    return [own.get(n, common) for n in names]


def _bounded(name: str, value: float, low: float, high: float | None = None) -> None:
    if not value >= low or (high is not None and value > high):
        span = f">= {low:g}" if high is None else f"from {low:g} to {high:g}"
        raise UsageError(f"--{name} {value:g}: must be {span}")


def _in_child(work: Callable[[], object]) -> Callable[[], object]:
    """Start ``work`` in a forked child process; the returned function waits for its result
    (and raises what it raised). Without fork, ``work`` runs when the result is asked for."""
    if "fork" not in mp.get_all_start_methods():
        return work
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def run() -> None:
        try:
            child.send(("ok", work()))
        except BaseException as exc:  # pragma: no cover - reported by the parent
            child.send(("error", repr(exc)))
        finally:
            child.close()

    proc = ctx.Process(target=run)
    proc.start()
    child.close()

    def result() -> object:
        status, payload = parent.recv()
        proc.join()
        if status != "ok":
            raise RuntimeError(f"drawing the figures failed: {payload}")
        return payload

    return result


def _import_figures() -> None:
    """matplotlib's import (about 0.4 s of CPU), done while the other run finishes."""
    import broker.simulator.figures  # noqa: F401


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from broker.simulator.runner import run_scenario

    if args.preset and args.domain:
        raise UsageError("give either --preset or --domain, not both")
    if not args.preset and not args.domain:
        raise UsageError(f"give --preset ({', '.join(sorted(PRESETS))}) or --domain "
                         f"{DOMAIN_FORMAT}")
    _bounded("interval", args.interval, 1)
    _bounded("boot-delay", args.boot_delay, 0)
    _bounded("halt-delay", args.halt_delay, 0)
    _bounded("requeue-delay", args.requeue_delay, 0)
    _bounded("slowdown", args.slowdown, 0, 10)
    if args.preset:
        preset, workloads = preset_workloads(args.preset, args.traces, args.seed,
                                             args.strict, args.include_cancelled)
        title = preset.title
        completion_figure = preset.completion_figure
    else:
        workloads = [_parse_domain(d, args.strict, args.include_cancelled) for d in args.domain]
        title = " vs ".join(w.name for w in workloads)
        completion_figure = 5
    names = [w.name for w in workloads]
    if len(set(names)) != len(names):
        raise UsageError(f"domain names must differ: {', '.join(names)}")
    for w in workloads:
        w.check_capacity()
    policies = _policies(args, names)
    config = SimConfig(
        interval=args.interval, boot_delay=args.boot_delay, halt_delay=args.halt_delay,
        slowdown=args.slowdown, sharing=not args.no_sharing,
        epoch=float(workloads[0].unix_start), check_invariants=args.check_invariants,
        requeue_delay=args.requeue_delay,
    )
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder: {exc.strerror}") from None
    total = sum(len(w) for w in workloads)
    bar = tqdm(total=total, unit="job", desc="sharing" if config.sharing else "no sharing",
               disable=not sys.stderr.isatty(), file=sys.stderr, mininterval=0.5)
    try:
        runs = run_scenario(workloads, policies, config,
                            progress=None if bar.disable else bar.update,
                            parallel=not args.serial, meanwhile=_import_figures)
    finally:
        bar.close()
    from broker.simulator.figures import make_figures, write_series_csv

    summary = {
        "scenario": title,
        "config": {"interval_s": config.interval, "boot_delay_s": config.boot_delay,
                   "halt_delay_s": config.halt_delay, "slowdown": config.slowdown,
                   "requeue_delay_s": config.requeue_delay, "seed": args.seed, "strict": args.strict,
                   "include_cancelled": args.include_cancelled,
                   "check_invariants": args.check_invariants},
        "left_out_reasons": LEFT_OUT_REASONS,
        "domains": {w.name: {"capacity": w.capacity, "jobs": len(w), "source": w.source,
                             "left_out": {r: w.left_out.get(r, 0) for r in LEFT_OUT_REASONS}}
                    for w in workloads},
        "runs": {},
    }
    for run in runs:
        summary["runs"][run.label] = {
            "wall_s": round(run.wall_s, 3),
            "jobs_per_s": round(run.jobs_per_s, 1),
            "domains": run.summary,
        }
        if run.invariants is not None:
            summary["runs"][run.label]["invariants"] = run.invariants.as_dict()
    draw = partial(make_figures, out, runs, {w.name: w.capacity for w in workloads}, title,
                   args.paper_figure or completion_figure)
    drawing = _in_child(draw) if not args.serial else None  # figures while the files are written
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_series_csv(out / "series.csv", runs)
    with (out / "jobs.csv").open("w") as fh:
        fh.write(",".join(("run", "domain", *JOB_FIELDS)) + "\n")
        for run in runs:
            fh.write(run.jobs_csv)
    figures = drawing() if drawing is not None else draw()
    for w in workloads:
        left = _left_out_text(w)
        if left:
            print(f"{w.name}: {len(w)} jobs replayed; left out: {left}")
    for run in runs:
        label = "sharing" if run.sharing else "no sharing"
        print(f"{label}: {run.jobs} jobs in {run.wall_s:.2f} s ({run.jobs_per_s:,.0f} jobs/s)")
        for name, s in run.summary.items():
            print(f"  {name}: mean wait {s['mean_wait_s']:.0f} s, mean response "
                  f"{s['mean_response_s']:.0f} s, utilization {s['utilization']:.3f}, "
                  f"borrowed {s['borrowed_node_hours']:.0f} node-h, lent "
                  f"{s['lent_node_hours']:.0f} node-h, preemptions {s['preemptions']}")
    print(f"summary: {out / 'summary.json'}")
    print(f"time series: {out / 'series.csv'}")
    print(f"jobs: {out / 'jobs.csv'}")
    print("figures: " + ", ".join(str(p) for p in figures))
    broken = [run for run in runs if run.invariants is not None and not run.invariants.ok]
    for run in runs:
        if run.invariants is not None and run.invariants.ok:
            print(f"invariants, {run.label}: {run.invariants.events} logged events checked, "
                  "no violation")
    for run in broken:
        report = run.invariants
        print(f"viocluster: invariant violated in the {run.label} run: {report.first} "
              f"({report.count} violations in all; listed in summary.json)", file=sys.stderr)
    return 1 if broken else 0
