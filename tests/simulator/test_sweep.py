"""``viocluster sweep``: a tiny grid run here, cell by cell, as a job array, and wrong grids."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.simulator.sweep import TABLE_FIELDS, load_grid, run_cell, write_cell

VIOCLUSTER = Path(sys.executable).parent / "viocluster"

TINY = """\
policies:
  immediate: {}
  drain: {reclamation: {mode: drain}}
scenarios:
  gen:
    generated: {domains: 2, capacity: 16, days: 3, load: [0.4, 0.8]}
seeds: [1, 2]
settings: {interval: 1800}
"""


def sweep(*args, env=None):
    return subprocess.run([str(VIOCLUSTER), "sweep", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **(env or {})))


def assert_user_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("viocluster: error: ")
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(TINY)
    return path


def rows(out):
    with (out / "sweep.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_tiny_grid_runs_in_parallel_with_progress_and_collects_table_and_figure(tiny, tmp_path):
    out = tmp_path / "out"
    proc = sweep(tiny, "--out", out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    # 2 seeds x (baseline + 2 policies) = 6 cells, each reported as it ends
    assert "6 cells in 2 processes" in proc.stderr
    assert sum(line.startswith("[") and "/6]" in line for line in proc.stderr.splitlines()) == 6
    table = rows(out)
    assert list(table[0]) == list(TABLE_FIELDS)
    # 2 policies x 2 seeds x 2 domains
    assert len(table) == 8
    assert {(r["policy"], r["seed"], r["domain"]) for r in table} == {
        (p, s, d) for p in ("immediate", "drain") for s in ("1", "2") for d in ("d1", "d2")}
    assert all(r["preemptions"] == "0" and float(r["lost_node_h"]) == 0 for r in table
               if r["policy"] == "drain")
    md = (out / "sweep.md").read_text()
    assert "| immediate |" in md and "| drain |" in md
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "immediate:" in proc.stdout and str(out / "sweep.csv") in proc.stdout


def test_cells_one_by_one_then_collect_and_missing_cells_named(tiny, tmp_path):
    out = tmp_path / "out"
    grid = load_grid(tiny)
    cells = grid.cells()
    proc = sweep(tiny, "--out", out, "--cell", 0)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "cells" / "cell-0000.json").read_text())["cell"]["index"] == 0
    for cell in cells[1:-1]:  # the others as an array task runs them, without the start-up
        write_cell(out, run_cell(grid, cell))
    assert_user_error(sweep(tiny, "--out", out, "--collect"), "1 of 6 cells have no result",
                      f"{cells[-1].index} ({cells[-1].label})")
    assert sweep(tiny, "--out", out, "--cell", cells[-1].index).returncode == 0
    proc = sweep(tiny, "--out", out, "--collect")
    assert proc.returncode == 0, proc.stderr
    assert len(rows(out)) == 8
    assert_user_error(sweep(tiny, "--out", out, "--cell", 6), "cells 0 to 5")


FAKE_SBATCH = """#!/bin/sh
# stands in for Slurm's sbatch: runs every task of the array script, one after the other
for last; do script=$last; done
range=$(sed -n 's/^#SBATCH --array=//p' "$script")
echo "$@" > "$(dirname "$script")/sbatch-args"
i=${range%-*}
while [ "$i" -le "${range#*-}" ]; do
  SLURM_ARRAY_TASK_ID=$i sh "$script" || exit 1
  i=$((i + 1))
done
echo 4242
"""


def test_slurm_array_script_runs_each_cell_through_the_command(tiny, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    out = tmp_path / "shared" / "out"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = sweep(tiny, "--out", out, "--slurm", "--sbatch-arg=--partition=batch", env=env)
    assert proc.returncode == 0, proc.stderr
    script = (out / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-5" in script and "#SBATCH --partition=batch" in script
    assert f" -m broker.cli sweep {out / 'grid.yml'} --out {out} --cell" in script
    assert (out / "sbatch-args").read_text().split()[:2] == ["--parsable", "--wait"]
    assert len(rows(out)) == 8
    # the grid the tasks read is self-contained: inline policies, the generated scenario
    assert load_grid(out / "grid.yml").cells() == load_grid(tiny).cells()


def test_slurm_without_sbatch_says_what_to_do(tiny, tmp_path):
    proc = sweep(tiny, "--out", tmp_path / "out", "--slurm", env={"PATH": str(tmp_path)})
    assert_user_error(proc, "sbatch not found", "drop --slurm")


@pytest.mark.parametrize("text, words", [
    ("policies: [\n", ("the grid must be a YAML mapping",)),
    ("- a\n- b\n", ("(top level)", "expected a mapping")),
    ("scenarios: {g: {preset: demo}}\n", ("missing policies",)),
    ("policies: {a: {}}\nscenarios: {g: {preset: demo}}\nseed: [1]\n",
     ("unknown key 'seed'", "allowed keys: policies, scenarios, seeds")),
    ("policies: {a: {}}\nscenarios: {g: {preset: nope}}\n", ("scenarios.g.preset",
                                                            "unknown preset 'nope'")),
    ("policies: {a: {}}\nscenarios: {g: {generated: {domains: 2, days: 3}}}\n",
     ("scenarios.g.generated", "missing capacity")),
    ("policies: {a: {}}\nscenarios: {g: {generated: {domains: 0, capacity: 8, days: 3}}}\n",
     ("scenarios.g.generated.domains", "whole number >= 1")),
    ("policies: {a: {}}\nscenarios: {g: {preset: demo, domains: [x]}}\n",
     ("give exactly one of",)),
    ("policies: {a: {}}\nscenarios: {g: {domains: [oops]}}\n",
     ("scenarios.g.domains[0]", "NAME=TRACE")),
    ("policies: {a: {lending: {fraction: 1}}}\nscenarios: {g: {preset: demo}}\n",
     ("policies.a", "lending.fraction", "unknown key")),
    ("policies: {a: missing.yml}\nscenarios: {g: {preset: demo}}\n",
     ("policies.a", "missing.yml not found")),
    ("policies: {a: {}}\nscenarios: {g: {preset: demo}}\nseeds: [1, x]\n",
     ("seeds", "distinct whole numbers")),
    ("policies: {}\nscenarios: {g: {preset: demo}}\n", ("policies", "at least one")),
    ("policies: {a: {}}\nscenarios: {g: {preset: demo}}\nsettings: {interval: 0}\n",
     ("settings.interval", ">= 1")),
])
def test_wrong_grid_says_what_is_wrong_in_one_line(tmp_path, text, words):
    grid = tmp_path / "grid.yml"
    grid.write_text(text)
    assert_user_error(sweep(grid, "--out", tmp_path / "out"), str(grid), *words)


def test_missing_grid_file(tmp_path):
    assert_user_error(sweep(tmp_path / "none.yml", "--out", tmp_path / "out"),
                      "grid file", "not found")


def test_the_shipped_example_grid_reads_and_each_cell_is_named() -> None:
    grid = load_grid(Path(__file__).resolve().parents[2] / "docs" / "examples" / "sweep.yml")
    assert sorted(grid.policies) == ["drain", "gradual", "immediate", "lease"]
    assert sorted(grid.scenarios) == ["gen2", "gen4"] and grid.seeds == [1, 2, 3]
    # each scenario and seed: a baseline without sharing plus one cell per policy
    assert len(grid.cells()) == 2 * 3 * (1 + 4)
