"""The twin comparison's plain parts: the workload, reading a job's runs from its output, the
costs measured from contracts, the simulator's replay and the checks. The lab part runs with
`make twin` (bench/bench_twin.py), ten minutes of real jobs; here it is what it hands over."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from broker.lab.twin import (
    _runs_from_output,
    lab_trades,
    load_record,
    merge_runs,
    parse_squeue,
    replay,
)
from broker.policy import parse_policy
from broker.simulator import twin as model
from broker.simulator.swf import parse_swf_lines
from broker.simulator.workload import from_trace

LAB_POLICY = {
    "lending": {"enabled": True, "fraction_idle": 0.5, "min_reserve": 0},
    "borrowing": {"enabled": True, "max_borrowed": 2,
                  "require": {"cpus": 1, "memory_mb": 256, "disk_gb": 1}},
    "reclamation": {"mode": "immediate", "lease_s": 3600, "per_interval": 1},
}
COSTS = model.Costs(interval_s=2.0, boot_s=7.0, halt_s=2.5, slowdown=0.0)


def test_workload_is_seeded_and_about_ten_minutes():
    jobs = model.twin_workload()
    assert jobs == model.twin_workload(seed=1)
    assert jobs != model.twin_workload(seed=2)
    assert 40 <= len(jobs) <= 60
    assert max(j.submit for j in jobs) <= 600
    assert [j.submit for j in jobs] == sorted(j.submit for j in jobs)
    for d in ("a", "b"):
        mine = [j.index for j in jobs if j.domain == d]
        assert mine == list(range(1, len(mine) + 1))


def test_a_wrong_burst_is_refused_with_what_is_wrong():
    with pytest.raises(model.TwinError, match="shortest <= longest"):
        model.Burst("a", 0, 3, 10, (50, 20))


def test_the_workload_as_swf_reads_back_the_same():
    jobs = model.twin_workload()
    text = model.swf_text(jobs, "b", 2)
    w = from_trace("b", parse_swf_lines(text.splitlines(), "b.swf"), capacity=2)
    mine = [j for j in jobs if j.domain == "b"]
    assert w.runtime == [float(j.runtime) for j in mine]
    assert w.estimate == [model.ESTIMATE_S] * len(mine)


def test_runs_from_output_pair_starts_and_dones_and_see_cut_runs():
    own = {"a-node1", "a-node2"}
    text = ("start a-v1 1000.5\n"            # cut on the VM (requeued)
            "start a-node1 1010.0\n"
            "noise line\n"
            "done a-node1 1040.25\n")
    assert _runs_from_output(text, own, 1000.0) == [("borrowed", 0.5, None, "a-v1"),
                                                    ("own", 10.0, 40.25, "a-node1")]
    assert _runs_from_output("", own, 0.0) == []
    assert _runs_from_output("start a-node2 5\n", own, 0.0) == [("own", 5.0, None, "a-node2")]


def test_a_run_squeue_saw_but_the_output_lost_is_put_back_as_cut():
    own = {"a-node1"}
    from_output = [("own", 10.0, 40.0, "a-node1")]
    seen = [("a-v1", 1003.0), ("a-node1", 1010.1)]
    assert merge_runs(from_output, seen, own, 1000.0) == [("borrowed", 3.0, None, "a-v1"),
                                                          ("own", 10.0, 40.0, "a-node1")]
    assert merge_runs(from_output, seen[1:], own, 1000.0) == from_output


def _contract(role, **at):
    return {"role": role, "peer": "x", "hosts": ["h"],
            "transitions": [{"at": t, "to": to} for to, t in at.items()]}


def test_costs_are_the_medians_of_what_the_run_measured():
    contracts = {"a": [_contract("borrower", agreed=10, active=16), _contract("borrower", agreed=50, active=58),
                       _contract("lender", reclaiming=100, closed=103)],
                 "b": [_contract("borrower", agreed=0, active=7), _contract("lender", reclaiming=5)]}
    outcomes = [model.JobOutcome("a", 1, 0, 10, [("own", 0, 10.1)]),
                model.JobOutcome("a", 2, 0, 10, [("borrowed", 0, None), ("borrowed", 20, 31.1)])]
    costs = model.measure_costs(2.0, contracts, outcomes, [10.0, 11.0, 12.0])
    assert (costs.boot_s, costs.active_s, costs.halt_s, costs.requeue_delay_s) == (7.0, 7.0, 3.0, 11.0)
    assert costs.slowdown == pytest.approx(0.1)
    assert costs.samples == {"boot_s": 3, "active_s": 3, "halt_s": 1, "slowdown": 1,
                             "requeue_delay_s": 3}
    # with the first job on each VM known, that is the boot the simulator gets
    costs = model.measure_costs(2.0, contracts, outcomes, [], [9.0, 10.5])
    assert (costs.boot_s, costs.active_s, costs.requeue_delay_s) == (9.75, 7.0, 0.0)


def test_squeue_lines_give_state_node_and_the_delay_of_a_held_requeue():
    out = ("19|PENDING||BeginTime|2026-12-01T01:04:31|2026-12-01T01:04:42\n"
           "16|RUNNING|a-node1|None|2026-12-01T01:03:00|2026-12-01T01:03:39\n"
           "20|PENDING||Resources|2026-12-01T01:04:00|N/A\n"
           "garbled line\n")
    assert parse_squeue(out) == {"19": ("PENDING", "", 11.0), "16": ("RUNNING", "a-node1", None),
                                 "20": ("PENDING", "", None)}


def _submitted():
    return [model.JobOutcome(j.domain, j.index, j.submit, j.runtime) for j in model.twin_workload()]


def test_the_simulator_replays_the_workload_and_trades():
    policy = parse_policy(LAB_POLICY)
    sim = model.simulate(_submitted(), {"a": 2, "b": 2}, {"a": policy, "b": policy}, COSTS)
    assert sim.violations == []
    assert all(o.finished for o in sim.outcomes) and len(sim.outcomes) == len(model.twin_workload())
    # A's first burst outgrows its two nodes while B is idle: A borrows from B
    assert sim.trades[0].borrower == "a" and sim.trades[0].lender == "b"
    assert {t.borrower for t in sim.trades} == {"a", "b"}
    assert sum(o.preemptions for o in sim.outcomes) >= 1  # a lender took a busy node back
    # a run on a VM starts no earlier than the boot after the first trade
    first_vm = min(o.runs[0][1] for o in sim.outcomes if o.runs[0][0] == "borrowed")
    assert first_vm >= sim.trades[0].at + COSTS.boot_s


def test_compare_holds_a_run_to_itself_and_flags_what_differs():
    policy = parse_policy(LAB_POLICY)
    sim = model.simulate(_submitted(), {"a": 2, "b": 2}, {"a": policy, "b": policy}, COSTS)
    same = model.compare(sim.outcomes, sim.trades, sim.outcomes, sim.trades, ["a", "b"])
    assert same.ok and same.same_placement["a"][0] == same.same_placement["a"][1]
    # a lab whose A waited twice as long, with two more trades: both checks fail for A only
    slower = [replace(o, submit=o.submit - o.wait) if o.domain == "a" else o for o in sim.outcomes]
    more = list(sim.trades) + [model.Trade("a", "b", 1.0, 1)] * 2
    diff = model.compare(slower, more, sim.outcomes, sim.trades, ["a", "b"])
    failed = {(c.domain, c.what) for c in diff.checks if not c.ok}
    assert failed == {("a", "mean wait (s)"), ("a", "trades")}
    text = model.format_comparison(diff, COSTS)
    assert "DIFF a trades" in text and "ok   b trades" in text


def _record(tmp_path: Path) -> dict:
    origin = 1_700_000_000.0
    jobs = []
    for j in model.twin_workload():
        jobs.append({"domain": j.domain, "index": j.index, "submit": j.submit + 0.1,
                     "runtime": j.runtime, "runs": [["own", j.submit + 1, j.submit + 1 + j.runtime]]})
    # a's third job ran on the VM of a's one contract, 8.5 s after its agreement
    jobs[2].update(runs=[["borrowed", 17.5, 17.5 + jobs[2]["runtime"]]], hosts=["a-v1"])
    borrower = _contract("borrower", agreed=origin + 9, active=origin + 15.5)
    borrower.update(peer="b", nodes=["a-v1"])
    return {"origin": origin, "capacities": {"a": 2, "b": 2}, "interval_s": {"a": 2, "b": 2},
            "policies": {"a": LAB_POLICY, "b": LAB_POLICY}, "jobs": jobs,
            "contracts": {"a": [borrower], "b": [_contract("lender", reclaiming=origin + 150,
                                                           closed=origin + 152)]}}


def test_replay_of_a_record_writes_the_comparison(tmp_path):
    record = _record(tmp_path)
    assert lab_trades(record) == [model.Trade("a", "b", 9.0, 1)]
    comparison, costs, text = replay(record, tmp_path)
    assert (costs.boot_s, costs.active_s, costs.halt_s) == (8.5, 6.5, 2.0)
    assert "mean wait (s)" in text
    saved = json.loads((tmp_path / "twin.json").read_text())
    assert saved["ok"] == comparison.ok and set(saved["lab"]) == {"a", "b"}
    rows = (tmp_path / "jobs.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(model.twin_workload())


def test_a_broken_record_says_what_is_wrong_and_writes_nothing(tmp_path):
    record = _record(tmp_path)
    del record["policies"]
    with pytest.raises(model.TwinError, match="no 'policies'"):
        replay(record, tmp_path / "out")
    record = _record(tmp_path)
    record["jobs"][0]["runs"] = [["own", 1.0, None]]
    with pytest.raises(model.TwinError, match="no finished run"):
        replay(record, tmp_path / "out")
    record = _record(tmp_path)
    record["interval_s"] = {"a": 2, "b": 5}
    with pytest.raises(model.TwinError, match="intervals differ"):
        replay(record, tmp_path / "out")
    for key, value in (("interval_s", "2"), ("contracts", {"a": [["not", "a", "contract"]]}),
                       ("capacities", {"a": "two"})):
        record = _record(tmp_path)
        record[key] = value
        with pytest.raises(model.TwinError, match="not as `viocluster lab twin` writes it"):
            replay(record, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_on_a_bad_record_is_one_clear_line(tmp_path):
    bad = tmp_path / "lab.json"
    bad.write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "broker.cli", "lab", "twin", "--replay", str(bad),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "is not JSON" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(model.TwinError, match="cannot read"):
        load_record(tmp_path / "missing.json")


def test_a_requeue_delay_holds_a_preempted_job_back():
    from broker.simulator.engine import Simulation

    policy = parse_policy(LAB_POLICY)
    workloads = model._workloads(_submitted(), {"a": 2, "b": 2})

    def restarts(delay: float) -> list[float]:
        sim = Simulation(workloads, [policy, policy], replace(COSTS, requeue_delay_s=delay).config(0.0))
        result = sim.run()
        return [d.start[j] - cuts[-1][1] for d in result.domains for j, cuts in d.history.items()]

    at_once, held = restarts(0.0), restarts(10.0)
    assert at_once and held
    assert min(at_once) < 10.0  # without the delay a cut job starts again sooner
    assert min(held) >= 10.0
