"""Jobs a trace holds that cannot or should not be replayed: left out and counted per reason,
refused with --strict, cancelled jobs out unless asked for."""

from __future__ import annotations

import json

import pytest
from swf_helpers import HEADER, swf_line, write_swf
from test_simulate_cli import assert_user_error, simulate

from broker.errors import TraceError
from broker.simulator.engine import SimConfig, Simulation
from broker.simulator.swf import read_swf
from broker.simulator.workload import from_trace

FIRST = HEADER.count("\n") + 1  # line number of the first job line


def mixed_lines() -> list[str]:
    return [
        swf_line(1, 0, 100, 2),
        swf_line(2, 5, 100, 0, req_procs=0),  # zero processors
        swf_line(3, 5, -1, 4),  # run time -1: cancelled before it started
        swf_line(4, 6, 0, 4, status=5),  # status 5 (cancelled), never ran
        swf_line(5, 7, 50, 1, status=5),  # cancelled after running 50 s: replayed
        swf_line(6, -1, 30, 1),  # no submit time
        swf_line(7, 8, 30, -1, req_procs=-1),  # negative processors
        swf_line(8, 9, 20, 1),
    ]


def test_unreplayable_and_cancelled_jobs_are_left_out_and_counted(tmp_path):
    trace = read_swf(write_swf(tmp_path / "m.swf", mixed_lines()))
    w = from_trace("m", trace)
    assert w.job_ids == [1, 5, 8]
    assert w.runtime == [100.0, 50.0, 20.0]
    assert w.left_out == {"cancelled": 2, "no_processors": 2, "no_submit_time": 1}
    with_cancelled = from_trace("m", trace, include_cancelled=True)
    assert with_cancelled.job_ids == [1, 3, 4, 5, 8]
    assert with_cancelled.runtime == [100.0, 0.0, 0.0, 50.0, 20.0]  # as 0-second jobs
    assert with_cancelled.left_out == {"cancelled": 0, "no_processors": 2, "no_submit_time": 1}
    # a section counts only its own days; a job without submit time belongs to none
    early = from_trace("m", trace, start_day=0, end_day=5.5 / 86400)
    assert early.job_ids == [1]
    assert early.left_out == {"cancelled": 1, "no_processors": 1, "no_submit_time": 1}


def test_strict_refuses_the_first_unreplayable_job_naming_its_line(tmp_path):
    trace = read_swf(write_swf(tmp_path / "m.swf", mixed_lines()))
    with pytest.raises(TraceError) as info:
        from_trace("m", trace, strict=True)
    assert str(info.value).startswith(
        f"{tmp_path / 'm.swf'}:{FIRST + 1}: job 2 has no processor count (fields 5 and 8 are "
        "0 and 0)")
    lines = [swf_line(1, 0, 100, 2), swf_line(6, -1, 30, 1)]
    trace = read_swf(write_swf(tmp_path / "s.swf", lines))
    with pytest.raises(TraceError, match=rf"s.swf:{FIRST + 1}: job 6 has no submit time"):
        from_trace("s", trace, strict=True)
    # cancelled jobs are not unreplayable: strict leaves them out as usual
    lines = [swf_line(1, 0, 100, 2), swf_line(3, 5, -1, 4)]
    w = from_trace("c", read_swf(write_swf(tmp_path / "c.swf", lines)), strict=True)
    assert len(w) == 1 and w.left_out["cancelled"] == 1


def test_a_cancelled_job_no_longer_holds_back_backfilling(tmp_path):
    # 4 nodes: job 1 holds 3 until 1000. Job 2 (4 nodes) was cancelled before it started.
    # Replayed as a 0-second job it would be the head with a reservation at 1000, and job 3
    # (1 node, 2000 s) could not backfill; left out, job 3 starts at once.
    lines = [swf_line(1, 0, 1000, 3), swf_line(2, 10, -1, 4), swf_line(3, 20, 2000, 1)]
    trace = read_swf(write_swf(tmp_path / "c.swf", lines))
    for include, starts in ((False, [0.0, 20.0]), (True, [0.0, 1000.0, 1000.0])):
        w = from_trace("c", trace, 4, include_cancelled=include)
        d = Simulation([w], config=SimConfig(sharing=False)).run().domains[0]
        assert d.start == starts


def test_cli_counts_left_out_jobs_in_the_summary_and_strict_exits_2(tmp_path):
    path = write_swf(tmp_path / "m.swf", mixed_lines())
    proc = simulate("--domain", f"m={path}:4", "--out", tmp_path / "o", "--no-sharing")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    domain = summary["domains"]["m"]
    assert domain["jobs"] == 3
    assert domain["left_out"] == {"cancelled": 2, "no_processors": 2, "no_submit_time": 1}
    assert set(summary["left_out_reasons"]) == set(domain["left_out"])
    assert summary["runs"]["no_sharing"]["domains"]["m"]["jobs"] == 3
    assert "m: 3 jobs replayed; left out: 2 cancelled, 2 no_processors, 1 no_submit_time" \
        in proc.stdout
    proc = simulate("--domain", f"m={path}:4", "--out", tmp_path / "o2", "--no-sharing",
                    "--include-cancelled")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["domains"]["m"]["jobs"] == 5
    assert summary["runs"]["no_sharing"]["domains"]["m"]["jobs"] == 5
    proc = simulate("--domain", f"m={path}:4", "--out", tmp_path / "o3", "--strict")
    assert_user_error(proc, f"m.swf:{FIRST + 1}:", "job 2", "no processor count", "--strict")


def test_cli_trace_with_nothing_to_replay(tmp_path):
    path = write_swf(tmp_path / "c.swf", [swf_line(1, 0, -1, 2), swf_line(2, 0, -1, 2)])
    proc = simulate("--domain", f"c={path}", "--out", tmp_path / "o")
    assert_user_error(proc, "no job to replay", "2 cancelled")
