"""The real ``viocluster simulate`` console script, run in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from swf_helpers import swf_line, write_swf

from broker.simulator.metrics import SUMMARY_FIELDS

VIOCLUSTER = Path(sys.executable).parent / "viocluster"


def simulate(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([str(VIOCLUSTER), "simulate", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=full_env)


def assert_user_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("viocluster: error: ")
    for word in words:
        assert word in lines[0]


def test_demo_preset_writes_summary_series_and_figures(tmp_path):
    out = tmp_path / "demo"
    proc = simulate("--preset", "demo", "--out", out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"sharing", "no_sharing"}
    for run in summary["runs"].values():
        assert run["wall_s"] > 0 and run["jobs_per_s"] > 0
        assert set(run["domains"]) == {"alpha", "beta"}
        for fields in run["domains"].values():
            assert tuple(fields) == SUMMARY_FIELDS
    sharing = summary["runs"]["sharing"]["domains"]
    assert sharing["alpha"]["borrowed_node_hours"] + sharing["beta"]["borrowed_node_hours"] > 0
    header = (out / "series.csv").read_text().splitlines()[0]
    assert header.startswith("run,domain,t_s,demand")
    for name in ("fig3_demand.png", "fig4_borrowed.png", "fig5_completion.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(out / name) in proc.stdout
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal


def test_domains_from_traces_no_sharing_and_policy(tmp_path, repo):
    a = write_swf(tmp_path / "a.swf", [swf_line(i, i * 60, 600, 1 + i % 4) for i in range(40)])
    b = write_swf(tmp_path / "b.swf.gz", [swf_line(1, 0, 100, 2)])
    proc = simulate("--domain", f"a={a}:4", "--domain", f"b={b}", "--out", tmp_path / "o",
                    "--no-sharing", "--policy", repo / "docs/examples/policy.yml")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert list(summary["runs"]) == ["no_sharing"]
    assert summary["domains"]["a"]["capacity"] == 4
    assert summary["domains"]["b"]["capacity"] == 8  # header MaxProcs
    assert summary["runs"]["no_sharing"]["domains"]["a"]["jobs"] == 40


def test_missing_trace(tmp_path):
    proc = simulate("--domain", f"a={tmp_path / 'absent.swf'}", "--out", tmp_path / "o")
    assert_user_error(proc, "absent.swf", "not found")


def test_malformed_swf(tmp_path):
    bad = write_swf(tmp_path / "bad.swf", [swf_line(1, 0, 10, 1), "2 3 4"])
    proc = simulate("--domain", f"a={bad}", "--out", tmp_path / "o")
    assert_user_error(proc, "bad.swf:", "expected 18")


def test_unknown_policy_key(tmp_path, small_swf):
    policy = tmp_path / "p.yml"
    policy.write_text("lending:\n  fraction: 0.5\n")
    proc = simulate("--domain", f"a={small_swf}", "--policy", policy, "--out", tmp_path / "o")
    assert_user_error(proc, "lending.fraction", "fraction_idle")


def test_capacity_below_largest_job(tmp_path, small_swf):
    proc = simulate("--domain", f"a={small_swf}:3", "--out", tmp_path / "o")
    assert_user_error(proc, "capacity 3", "largest job", "8")


def test_bad_domain_syntax_and_options(tmp_path, small_swf):
    assert_user_error(simulate("--domain", "nonsense", "--out", tmp_path), "NAME=TRACE")
    assert_user_error(simulate("--out", tmp_path), "--preset")
    assert_user_error(simulate("--domain", f"a={small_swf}", "--interval", "0", "--out",
                               tmp_path), "--interval")
    assert_user_error(simulate("--domain", f"a={small_swf}", "--requeue-delay", "-1", "--out",
                               tmp_path), "--requeue-delay")
    assert_user_error(simulate("--domain", f"a={small_swf}", "--domain", f"a={small_swf}",
                               "--out", tmp_path), "differ")


def test_trace_preset_without_traces(tmp_path):
    proc = simulate("--preset", "osc-ctc", "--traces", tmp_path, "--out", tmp_path / "o")
    assert_user_error(proc, "needs", "--traces")
    proc = simulate("--preset", "ctc-ctc", "--out", tmp_path / "o",
                    env={"VIOCLUSTER_TRACES": str(tmp_path / "none")})
    assert_user_error(proc, "CTC-SP2.swf.gz", "VIOCLUSTER_TRACES")


@pytest.mark.traces
@pytest.mark.slow
def test_trace_preset_runs(traces, tmp_path):
    proc = simulate("--preset", "ctc-ctc", "--traces", traces, "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert set(summary["runs"]["sharing"]["domains"]) == {"ctc1", "ctc2"}


def test_paper_figure_names_the_completion_figure_and_fig4_is_one_signed_series(tmp_path):
    out = tmp_path / "fig6"
    proc = simulate("--preset", "demo", "--paper-figure", "6", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "fig6_completion.png").is_file()
    assert not (out / "fig5_completion.png").exists()
    assert (out / "fig4_borrowed.png").is_file()
