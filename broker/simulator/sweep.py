"""``viocluster sweep``: a grid of simulations (policies x scenarios x seeds) from a YAML file.

A grid file names policies, scenarios and seeds::

    policies:                 # NAME: a policy mapping (as in a policy file) or a policy file
      immediate: {}
      drain: {reclamation: {mode: drain}}
      mine: mine.yml
    scenarios:                # NAME: one of preset, domains, generated
      demo: {preset: demo}
      osc-ctc512: {domains: ["osc=OSC-Clust.swf.gz:57@338-678", "ctc=CTC-SP2.swf.gz:512"]}
      gen8: {generated: {domains: 8, capacity: 64, days: 30, load: [0.3, 0.6]}}
    seeds: [1, 2, 3]          # for demo and generated scenarios; trace scenarios run once
    traces: /data/traces      # where presets and relative traces are found (optional)
    settings: {interval: 3600, boot_delay: 40, halt_delay: 16, slowdown: 0.15, requeue_delay: 0}

Each (scenario, seed) has one cell without sharing (the baseline) and one cell per policy with
sharing. A cell writes ``cells/cell-NNNN.json`` in the output folder; the collection joins them
into ``sweep.csv``, ``sweep.md`` and ``sweep.png``. Cells run in processes of this machine, or
as the tasks of a Slurm job array (:func:`slurm_script`), each task running one cell through
the same command (``--cell N``) and writing its file to the shared output folder.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from broker.errors import UserError
from broker.policy import DomainPolicy
from broker.policy.loader import parse_policy
from broker.simulator.engine import SimConfig
from broker.validation import read_yaml_file

GRID_KEYS = ("policies", "scenarios", "seeds", "traces", "settings")
SCENARIO_KINDS = ("preset", "domains", "generated")
GENERATED_KEYS = {"domains": "number of domains (>= 1)", "capacity": "nodes per domain",
                  "days": "length in days", "load": "base load, one number or [low, high]",
                  "bursts": "mapping every_days, hours, factor (bursty domains d1, d3, ...)"}
BURST_KEYS = ("every_days", "hours", "factor")
SETTINGS = {"interval": ("interval", 1.0), "boot_delay": ("boot_delay", 0.0),
            "halt_delay": ("halt_delay", 0.0), "slowdown": ("slowdown", 0.0),
            "requeue_delay": ("requeue_delay", 0.0)}
BASELINE = "no sharing"
TABLE_FIELDS = (
    "policy", "scenario", "seed", "domain", "capacity", "jobs",
    "response_alone_h", "response_h", "response_change_pct", "wait_alone_h", "wait_h",
    "bounded_slowdown_alone", "bounded_slowdown", "utilization_alone", "utilization",
    "preemptions", "lost_node_h", "borrowed_node_h", "lent_node_h",
)


class GridError(UserError):
    """The grid file is wrong (missing, not YAML, an unknown key or a bad value)."""


class SweepError(UserError):
    """A sweep cannot go on (cells missing at collection, sbatch absent or failing)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    kind: str  # preset, domains or generated
    value: Any  # preset name, list of --domain strings, or generated parameters
    seeded: bool

    def spec(self) -> dict:
        return {self.kind: self.value}


@dataclass(frozen=True, slots=True)
class Cell:
    index: int
    policy: str | None  # None: the baseline without sharing
    scenario: str
    seed: int | None  # None: a trace scenario (run once)

    @property
    def label(self) -> str:
        seed = f" seed {self.seed}" if self.seed is not None else ""
        return f"{self.policy or BASELINE} x {self.scenario}{seed}"


@dataclass(slots=True)
class Grid:
    source: str
    policies: dict[str, Any]  # name -> policy mapping (files read in)
    scenarios: dict[str, Scenario]
    seeds: list[int]
    traces: str | None = None
    settings: dict[str, float] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        out: list[Cell] = []
        for sc in self.scenarios.values():
            for seed in (self.seeds if sc.seeded else [None]):
                for pol in (None, *self.policies):
                    out.append(Cell(len(out), pol, sc.name, seed))
        return out

    def resolved(self) -> dict:
        """The grid as a self-contained mapping (policies inline, paths absolute): what the
        output folder keeps, and what the cells of a job array read."""
        return {
            "policies": self.policies,
            "scenarios": {n: s.spec() for n, s in self.scenarios.items()},
            "seeds": self.seeds,
            **({"traces": self.traces} if self.traces else {}),
            "settings": self.settings,
        }

    def config(self, sharing: bool) -> SimConfig:
        return SimConfig(sharing=sharing, **{SETTINGS[k][0]: v for k, v in self.settings.items()})


# -- reading a grid ------------------------------------------------------------------------

def _fail(source: str, where: str, problem: str) -> GridError:
    return GridError(f"{source}: {where}: {problem}")


def _mapping(source: str, where: str, value: Any, allowed: Iterable[str]) -> dict:
    allowed = tuple(allowed)
    if not isinstance(value, dict) or not value:
        raise _fail(source, where, f"expected a mapping with keys from: {', '.join(allowed)}; "
                    f"got {value!r}")
    for key in value:
        if key not in allowed:
            raise _fail(source, where, f"unknown key {key!r}; allowed keys: {', '.join(allowed)}")
    return value


def _named(source: str, where: str, value: Any) -> dict:
    if not isinstance(value, dict) or not value:
        raise _fail(source, where, f"expected a mapping of NAME: ... with at least one entry; "
                    f"got {value!r}")
    return value


def _number(source: str, where: str, value: Any, low: float, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value >= low or not math.isfinite(value):
        kind = "a whole number" if integer else "a number"
        raise _fail(source, where, f"expected {kind} >= {low:g}; got {value!r}")
    return value


def _name(source: str, where: str, name: Any) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "/\\,\n"):
        raise _fail(source, where, f"name {name!r} must be a non-empty string without / , or "
                    "line breaks")
    return name


def _policy(source: str, base: Path, name: str, value: Any) -> Any:
    where = f"policies.{name}"
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.is_file():
            raise _fail(source, where, f"policy file {path} not found; give a policy file's "
                        "path (relative to the grid file) or an inline mapping such as "
                        "{reclamation: {mode: drain}}")
        data = read_yaml_file(path, "policy file", "give a policy file's path (relative to "
                              "the grid file)", "the policy must be a YAML mapping", GridError)
        parse_policy(data, str(path))  # its own errors name the file and key
        return data or {}
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _fail(source, where, f"expected a policy mapping or a policy file's path; got "
                    f"{value!r}")
    parse_policy(value, f"{source}: {where}")
    return value


def _scenario(source: str, base: Path, name: str, value: Any) -> Scenario:
    from broker.simulator.cli import _DOMAIN, DOMAIN_FORMAT
    from broker.simulator.presets import PRESETS

    where = f"scenarios.{name}"
    spec = _mapping(source, where, value, SCENARIO_KINDS)
    if len(spec) != 1:
        raise _fail(source, where, f"give exactly one of {', '.join(SCENARIO_KINDS)}")
    kind, v = next(iter(spec.items()))
    if kind == "preset":
        if v not in PRESETS:
            raise _fail(source, f"{where}.preset", f"unknown preset {v!r}; presets: "
                        f"{', '.join(sorted(PRESETS))}")
        return Scenario(name, kind, v, seeded=v == "demo")
    if kind == "domains":
        if not isinstance(v, list) or not v:
            raise _fail(source, f"{where}.domains", f"expected a list of {DOMAIN_FORMAT}")
        out = []
        for i, text in enumerate(v):
            m = _DOMAIN.match(text) if isinstance(text, str) else None
            if not m:
                raise _fail(source, f"{where}.domains[{i}]", f"got {text!r}; expected "
                            f"{DOMAIN_FORMAT}")
            trace = Path(m["trace"])
            if not trace.is_absolute() and (base / trace).is_file():
                text = text.replace(m["trace"], str((base / trace).resolve()), 1)
            out.append(text)
        return Scenario(name, kind, out, seeded=False)
    g = _mapping(source, f"{where}.generated", v, GENERATED_KEYS)
    for key in ("domains", "capacity", "days"):
        if key not in g:
            raise _fail(source, f"{where}.generated", f"missing {key} ({GENERATED_KEYS[key]})")
    _number(source, f"{where}.generated.domains", g["domains"], 1, integer=True)
    _number(source, f"{where}.generated.capacity", g["capacity"], 2, integer=True)
    _number(source, f"{where}.generated.days", g["days"], 0.01)
    load = g.get("load", [0.3, 0.6])
    loads = load if isinstance(load, list) else [load]
    if len(loads) not in (1, 2):
        raise _fail(source, f"{where}.generated.load", f"expected a number or [low, high]; got "
                    f"{load!r}")
    for x in loads:
        _number(source, f"{where}.generated.load", x, 0.001)
    if "bursts" in g:
        b = _mapping(source, f"{where}.generated.bursts", g["bursts"], BURST_KEYS)
        for key, val in b.items():
            _number(source, f"{where}.generated.bursts.{key}", val, 0.0)
    return Scenario(name, kind, dict(g), seeded=True)


def parse_grid(data: Any, source: str = "grid", base: Path | None = None) -> Grid:
    base = base or Path.cwd()
    top = _mapping(source, "(top level)", data, GRID_KEYS)
    for key in ("policies", "scenarios"):
        if key not in top:
            raise _fail(source, "(top level)", f"missing {key}: a mapping of NAME: ...; see "
                        "docs/simulator.md (Sweeps)")
    policies = {}
    for name, value in _named(source, "policies", top["policies"]).items():
        policies[_name(source, "policies", name)] = _policy(source, base, name, value)
    scenarios = {}
    for name, value in _named(source, "scenarios", top["scenarios"]).items():
        scenarios[_name(source, "scenarios", name)] = _scenario(source, base, name, value)
    seeds = top.get("seeds", [1])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise _fail(source, "seeds", f"expected a list of distinct whole numbers; got {seeds!r}")
    traces = top.get("traces")
    if traces is not None:
        if not isinstance(traces, str):
            raise _fail(source, "traces", f"expected a folder's path; got {traces!r}")
        path = Path(traces) if Path(traces).is_absolute() else base / traces
        if not path.is_dir():
            raise _fail(source, "traces", f"folder {path} not found")
        traces = str(path.resolve())
    settings = {}
    for key, value in (top.get("settings") or {}).items():
        if key not in SETTINGS:
            raise _fail(source, "settings", f"unknown key {key!r}; allowed keys: "
                        f"{', '.join(SETTINGS)}")
        settings[key] = float(_number(source, f"settings.{key}", value, SETTINGS[key][1]))
    return Grid(source, policies, scenarios, [int(s) for s in seeds], traces, settings)


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    data = read_yaml_file(path, "grid file", "give the path of a YAML grid "
                          "(docs/simulator.md, Sweeps, has an example)",
                          "the grid must be a YAML mapping with policies and scenarios", GridError)
    return parse_grid(data, str(path), path.resolve().parent)


# -- running a cell ------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _trace(path: str):
    from broker.simulator.swf import read_swf

    return read_swf(path)


def scenario_workloads(grid: Grid, scenario: Scenario, seed: int | None) -> list:
    from broker.simulator import cli
    from broker.simulator.presets import preset_workloads
    from broker.simulator.synthetic import BurstSpec, generated_workloads
    from broker.simulator.workload import from_trace

    traces = Path(grid.traces) if grid.traces else None
    if scenario.kind == "preset":
        return preset_workloads(scenario.value, traces, seed if seed is not None else 1)[1]
    if scenario.kind == "domains":
        out = []
        for text in scenario.value:
            m = cli._DOMAIN.match(text)
            path = Path(m["trace"])
            if not path.is_absolute() and traces is not None:
                path = traces / path
            if not path.is_file():
                raise SweepError(f"scenario {scenario.name}: trace {path} not found; put it "
                                 "beside the grid file or in the grid's traces folder")
            d0 = float(m["d0"]) if m["d0"] else None
            d1 = float(m["d1"]) if m["d1"] else None
            out.append(from_trace(m["name"], _trace(str(path)),
                                  int(m["cap"]) if m["cap"] else None, d0, d1))
        return out
    g = scenario.value
    load = g.get("load", [0.3, 0.6])
    load = tuple(load) if isinstance(load, list) and len(load) == 2 else (
        load[0] if isinstance(load, list) else load)
    bursts = None
    if "bursts" in g:
        b = g["bursts"]
        bursts = BurstSpec(burst_every_s=b.get("every_days", 5) * 86400.0,
                           burst_len_s=b.get("hours", 6) * 3600.0,
                           burst_factor=b.get("factor", 6))
    return generated_workloads(int(g["domains"]), int(g["capacity"]), float(g["days"]),
                               seed if seed is not None else 1, load, bursts)


def run_cell(grid: Grid, cell: Cell) -> dict:
    """One cell: its scenario's workloads with its policy (sharing) or alone (baseline)."""
    from dataclasses import replace

    from broker.simulator.runner import run_once

    workloads = scenario_workloads(grid, grid.scenarios[cell.scenario], cell.seed)
    for w in workloads:
        w.check_capacity()
    if cell.policy is None:
        policies = [DomainPolicy() for _ in workloads]
    else:
        policies = [parse_policy(grid.policies[cell.policy], f"policy {cell.policy}")
                    for _ in workloads]
    config = replace(grid.config(cell.policy is not None), epoch=float(workloads[0].unix_start))
    run = run_once(workloads, policies, config)
    return {"cell": asdict(cell), "wall_s": round(run.wall_s, 3), "jobs": run.jobs,
            "capacity": {w.name: w.capacity for w in workloads}, "domains": run.summary}


def cell_path(out: Path, index: int) -> Path:
    return out / "cells" / f"cell-{index:04d}.json"


def write_cell(out: Path, result: dict) -> None:
    path = cell_path(out, result["cell"]["index"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.rename(path)


def _worker(grid: Grid, cell: Cell, out: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    result = run_cell(grid, cell)
    write_cell(Path(out), result)
    return cell.index, time.perf_counter() - t0


def run_local(grid: Grid, out: Path, workers: int,
              report: Callable[[str], None] = lambda s: None) -> None:
    """Every cell of ``grid`` in ``workers`` processes of this machine, reporting each end."""
    cells = grid.cells()
    t0 = time.perf_counter()
    width = len(str(len(cells)))
    done = 0
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(cells)))) as pool:
        pending = {pool.submit(_worker, grid, c, str(out)): c for c in cells}
        report(f"{len(cells)} cells in {min(workers, len(cells))} processes")
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                cell = pending.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    for other in pending:
                        other.cancel()
                    if isinstance(exc, UserError):
                        raise SweepError(f"cell {cell.index} ({cell.label}): {exc}") from None
                    raise exc
                done += 1
                _, wall = fut.result()
                report(f"[{done:>{width}}/{len(cells)}] {cell.label}: {wall:.1f} s "
                       f"(elapsed {time.perf_counter() - t0:.0f} s)")


# -- Slurm ---------------------------------------------------------------------------------

def slurm_script(grid_file: Path, out: Path, cells: int, python: str,
                 sbatch_args: Iterable[str] = ()) -> str:
    """An sbatch job array: task N runs cell N of the grid through ``viocluster sweep``."""
    lines = [
        "#!/bin/sh",
        "#SBATCH --job-name=viocluster-sweep",
        f"#SBATCH --array=0-{cells - 1}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --output={out / 'logs' / 'cell-%a.out'}",
        *(f"#SBATCH {a}" for a in sbatch_args),
        "# one cell of the grid per array task; the result lands in cells/ of the output folder",
        'echo "task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID on $(hostname)"',
        f"exec {shlex.quote(python)} -m broker.cli sweep {shlex.quote(str(grid_file))} "
        f"--out {shlex.quote(str(out))} --cell \"$SLURM_ARRAY_TASK_ID\"",
    ]
    return "\n".join(lines) + "\n"


# -- collecting ----------------------------------------------------------------------------

def collect(grid: Grid, out: Path) -> list[dict]:
    """Join the cell files into table rows (one per policy, scenario, seed and domain)."""
    cells = grid.cells()
    missing = [c for c in cells if not cell_path(out, c.index).is_file()]
    if missing:
        shown = ", ".join(f"{c.index} ({c.label})" for c in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise SweepError(f"{len(missing)} of {len(cells)} cells have no result in "
                         f"{out / 'cells'}: {shown}{more}; run them (--cell N, or the sweep "
                         "again) or see logs/ of a Slurm run")
    results = {c.index: json.loads(cell_path(out, c.index).read_text()) for c in cells}
    base = {(c.scenario, c.seed): results[c.index] for c in cells if c.policy is None}
    rows = []
    for c in cells:
        if c.policy is None:
            continue
        r, b = results[c.index], base[(c.scenario, c.seed)]
        for dom, s in r["domains"].items():
            a = b["domains"][dom]
            alone, shared = a["mean_response_s"], s["mean_response_s"]
            rows.append({
                "policy": c.policy, "scenario": c.scenario,
                "seed": "" if c.seed is None else c.seed, "domain": dom,
                "capacity": r["capacity"][dom], "jobs": s["jobs"],
                "response_alone_h": round(alone / 3600, 3),
                "response_h": round(shared / 3600, 3),
                "response_change_pct": round(100 * (shared / alone - 1), 2) if alone else 0.0,
                "wait_alone_h": round(a["mean_wait_s"] / 3600, 3),
                "wait_h": round(s["mean_wait_s"] / 3600, 3),
                "bounded_slowdown_alone": round(a["mean_bounded_slowdown"], 2),
                "bounded_slowdown": round(s["mean_bounded_slowdown"], 2),
                "utilization_alone": round(a["utilization"], 3),
                "utilization": round(s["utilization"], 3),
                "preemptions": s["preemptions"],
                "lost_node_h": round(s["lost_node_seconds"] / 3600, 1),
                "borrowed_node_h": round(s["borrowed_node_hours"], 1),
                "lent_node_h": round(s["lent_node_hours"], 1),
            })
    return rows


def policy_summary(rows: list[dict]) -> list[dict]:
    """Per policy: domains (of every scenario and seed) worse than alone, the worst change,
    lost work and preemptions in all."""
    out = []
    for pol in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == pol]
        worst = max(mine, key=lambda r: r["response_change_pct"])
        out.append({
            "policy": pol, "domains": len(mine),
            "worse": sum(r["response_change_pct"] > 0 for r in mine),
            "worst_change_pct": worst["response_change_pct"],
            "worst": f"{worst['scenario']}{' seed ' + str(worst['seed']) if worst['seed'] != '' else ''}"
                     f" {worst['domain']}",
            "lost_node_h": round(sum(r["lost_node_h"] for r in mine), 1),
            "preemptions": sum(r["preemptions"] for r in mine),
        })
    return out


def write_table(out: Path, rows: list[dict], title: str) -> tuple[Path, Path]:
    csv_path, md_path = out / "sweep.csv", out / "sweep.md"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, TABLE_FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Sweep: {title}", "",
             "Mean response (submit to end) with the policy's sharing against the same "
             "workload without sharing; negative change = faster with sharing.", "",
             "| policy | domains | worse than alone | worst change | where | lost node-h | "
             "preemptions |", "|---|--:|--:|--:|---|--:|--:|"]
    for s in policy_summary(rows):
        lines.append(f"| {s['policy']} | {s['domains']} | {s['worse']} | "
                     f"{s['worst_change_pct']:+.1f} % | {s['worst']} | {s['lost_node_h']:,.0f} | "
                     f"{s['preemptions']:,} |")
    lines += ["", "| policy | scenario | seed | domain | response alone (h) | response (h) | "
              "change | wait alone (h) | wait (h) | preemptions | lost node-h | borrowed node-h "
              "| lent node-h |", "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['scenario']} | {r['seed']} | {r['domain']} | "
                     f"{r['response_alone_h']:.2f} | {r['response_h']:.2f} | "
                     f"{r['response_change_pct']:+.1f} % | {r['wait_alone_h']:.2f} | "
                     f"{r['wait_h']:.2f} | {r['preemptions']} | {r['lost_node_h']:,.0f} | "
                     f"{r['borrowed_node_h']:,.0f} | {r['lent_node_h']:,.0f} |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_figure(out: Path, rows: list[dict], title: str) -> Path:
    """Change of mean response per scenario and domain (seeds averaged), a bar per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(r["policy"] for r in rows))
    groups = list(dict.fromkeys((r["scenario"], r["domain"]) for r in rows))
    mean: dict[tuple, list[float]] = {}
    for r in rows:
        mean.setdefault((r["policy"], r["scenario"], r["domain"]), []).append(
            r["response_change_pct"])
    width = 0.8 / max(1, len(policies))
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.5 * len(groups) + 2)), 4.2))
    for k, pol in enumerate(policies):
        ys = [sum(v) / len(v) for v in (mean.get((pol, s, d), [math.nan]) for s, d in groups)]
        ax.bar([i + (k - (len(policies) - 1) / 2) * width for i in range(len(groups))], ys,
               width, label=pol)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{s}\n{d}" for s, d in groups], fontsize=7, rotation=90)
    ax.set_ylabel("mean response vs\nno sharing (%)")
    ax.legend(fontsize=7, ncol=min(4, len(policies)))
    ax.set_title(f"{title}: below 0 = faster with sharing", fontsize=9)
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def finish(grid: Grid, out: Path, title: str) -> tuple[Path, Path, Path]:
    rows = collect(grid, out)
    csv_path, md_path = write_table(out, rows, title)
    return csv_path, md_path, write_figure(out, rows, title)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- command line --------------------------------------------------------------------------

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of simulations (policies x scenarios x seeds) and tabulate them",
        description="Run every cell of a YAML grid (docs/simulator.md, Sweeps) in processes of "
        "this machine, or as a Slurm job array with --slurm; write sweep.csv, sweep.md and "
        "sweep.png to --out.",
    )
    p.add_argument("grid", type=Path, metavar="GRID.yml", help="the grid file")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (for --slurm: on a file system the nodes share)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes on this machine (default: the cores it may use)")
    p.add_argument("--slurm", action="store_true",
                   help="submit the cells as a Slurm job array (sbatch), wait, then collect")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="an extra #SBATCH line for the array, e.g. --sbatch-arg=--partition=batch "
                   "(repeat)")
    p.add_argument("--python", default=sys.executable,
                   help="the Python (with viocluster installed) the array's tasks run, as the "
                   "nodes see it (default: this one)")
    p.add_argument("--no-wait", action="store_true",
                   help="with --slurm: submit and return; collect later with --collect")
    p.add_argument("--cell", type=int, help="run only cell N and write its result (what each "
                   "array task does)")
    p.add_argument("--collect", action="store_true",
                   help="only join the cells' results already in --out into the table and figure")
    p.set_defaults(func=main)


def main(args) -> int:
    import subprocess

    grid = load_grid(args.grid)
    out: Path = args.out.resolve()
    cells = grid.cells()
    # the grid's name; for the copy kept in the output folder, the folder's
    title = out.name if args.grid.resolve() == out / "grid.yml" else args.grid.stem
    if args.cell is not None:
        if not 0 <= args.cell < len(cells):
            raise SweepError(f"--cell {args.cell}: the grid has cells 0 to {len(cells) - 1}")
        t0 = time.perf_counter()
        write_cell(out, run_cell(grid, cells[args.cell]))
        print(f"cell {args.cell} ({cells[args.cell].label}): {time.perf_counter() - t0:.1f} s, "
              f"{cell_path(out, args.cell)}")
        return 0
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"--out {out}: cannot create the folder: {exc.strerror}") from None
    grid_copy = out / "grid.yml"
    if not args.collect:
        grid_copy.write_text(yaml.safe_dump(grid.resolved(), sort_keys=False))
    if args.slurm and not args.collect:
        if shutil.which("sbatch") is None:
            raise SweepError("sbatch not found: run --slurm on a Slurm submit host, or drop "
                             "--slurm to run the cells on this machine")
        script = out / "sweep.sbatch"
        script.write_text(slurm_script(grid_copy, out, len(cells), args.python, args.sbatch_arg))
        (out / "logs").mkdir(exist_ok=True)
        cmd = ["sbatch", "--parsable", *([] if args.no_wait else ["--wait"]), str(script)]
        say(f"{len(cells)} cells as a Slurm job array: {' '.join(cmd)}")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise SweepError("sbatch not found: run --slurm on a Slurm submit host, or drop "
                             "--slurm to run the cells on this machine") from None
        job = proc.stdout.strip().split(";")[0]
        if proc.returncode != 0 and not any(cell_path(out, c.index).is_file() for c in cells):
            raise SweepError(f"sbatch failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()}; see {out / 'logs'}")
        if args.no_wait:
            print(f"submitted job array {job}; when it has ended: viocluster sweep {args.grid} "
                  f"--out {out} --collect")
            return 0
        say(f"job array {job} ended after {time.perf_counter() - t0:.0f} s")
    elif not args.collect:
        run_local(grid, out, args.workers or default_workers(), say)
    csv_path, md_path, fig = finish(grid, out, title)
    for s in policy_summary(collect(grid, out)):
        print(f"{s['policy']}: {s['worse']} of {s['domains']} domains worse than alone (worst "
              f"{s['worst_change_pct']:+.1f} %, {s['worst']}), lost {s['lost_node_h']:,.0f} "
              f"node-h, {s['preemptions']:,} preemptions")
    print(f"table: {csv_path}, {md_path}")
    print(f"figure: {fig}")
    return 0
