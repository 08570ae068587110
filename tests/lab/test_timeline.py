"""The demo's report of a trade, from contract logs, observations and job outputs (no I/O)."""

from __future__ import annotations

from broker.lab.timeline import Event, build_report, format_summary, format_timeline, parse_job_output

T0 = 1_000_000.0


def _contract(cid: str, role: str, nodes: list[str], steps: list[tuple[float, str | None, str]]) -> dict:
    return {"id": cid, "role": role, "peer": "b" if role == "borrower" else "a", "state": steps[-1][2],
            "nodes": nodes, "hosts": ["b-node1"], "created_at": T0 + steps[0][0],
            "transitions": [{"at": T0 + at, "from": f, "to": t, "reason": f"{f}->{t}"} for at, f, t in steps]}


A = [_contract("a-1", "borrower", ["a-v1-0"], [(1.0, None, "proposed"), (1.2, "proposed", "agreed"),
                                                (1.3, "agreed", "provisioning"), (8.7, "provisioning", "active"),
                                                (40.1, "active", "reclaiming"), (40.9, "reclaiming", "closed")])]
B = [_contract("a-1", "lender", ["a-v1-0"], [(1.1, None, "proposed"), (1.25, "proposed", "agreed"),
                                              (40.0, "agreed", "reclaiming"), (43.0, "reclaiming", "closed")])]
OUT_VM = f"start a-v1-0 {T0 + 10}\ndone a-v1-0 {T0 + 25}\n"
OUT_REQUEUED = f"start a-v1-0 {T0 + 26}\nstart a-node1 {T0 + 45}\ndone a-node1 {T0 + 60}\n"
OUT_OWN = f"start a-node2 {T0 + 1}\ndone a-node2 {T0 + 16}\n"


def _report(**over):
    args = dict(burst_a=T0, burst_b=T0 + 39.5, a_contracts=A, b_contracts=B,
                observations=[Event(T0 + 40.6, "A", "job requeued: 3 taken off a-v1-0 (pending)"),
                              Event(T0 + 41.4, "B", "VM process gone: a-v1-0 on b-node1")],
                jobs=[parse_job_output("1", OUT_OWN), parse_job_output("2", OUT_VM),
                      parse_job_output("3", OUT_REQUEUED)],
                own_nodes={"a-node1", "a-node2"})
    args.update(over)
    return build_report(**args)


def test_figures_come_from_the_contract_logs_and_the_observations():
    r = _report()
    assert r.problems == []
    assert round(r.figures["agreed_to_idle_s"], 2) == 7.5
    assert round(r.figures["ask_to_agreed_s"], 2) == 0.2
    assert round(r.figures["reclaim_to_requeued_s"], 2) == 0.6
    assert round(r.figures["reclaim_to_vm_gone_s"], 2) == 1.4
    assert round(r.figures["reclaim_to_closed_s"], 2) == 3.0
    assert [j.job_id for j in r.jobs_on_borrowed] == ["2"]
    assert [(j.job_id, j.finished_on) for j in r.requeued] == [("3", "a-node1")]


def test_a_requeue_the_output_file_missed_comes_from_the_scheduler():
    """The VM was killed before its NFS client wrote back the run's start line."""
    lost_start = f"start a-node1 {T0 + 45}\ndone a-node1 {T0 + 60}\n"
    jobs = [parse_job_output("1", OUT_OWN), parse_job_output("2", OUT_VM),
            parse_job_output("3", lost_start)]
    assert _report(jobs=jobs).requeued == []
    jobs = [parse_job_output("1", OUT_OWN), parse_job_output("2", OUT_VM),
            parse_job_output("3", lost_start)]
    r = _report(jobs=jobs, taken_off={"3": "a-v1-0"})
    assert r.problems == []
    assert [(j.job_id, j.finished_on) for j in r.requeued] == [("3", "a-node1")]


def test_timeline_is_in_time_order_and_summary_marks_targets():
    r = _report()
    lines = format_timeline(r, T0).splitlines()
    times = [float(line.split()[0]) for line in lines]
    assert times == sorted(times) and len(lines) == 2 + 6 + 4 + 2
    summary = format_summary(r, {"agreed_to_idle_s": 5.0, "reclaim_to_vm_gone_s": 3.0})
    assert "7.50 s (target <= 5 s: MISSED)" in summary
    assert "1.40 s (target <= 3 s: met)" in summary


def test_a_trade_that_never_happened_is_a_problem_not_a_crash():
    r = _report(a_contracts=[], b_contracts=[], observations=[],
                jobs=[parse_job_output("1", OUT_OWN)])
    assert "no borrowed VM became active in domain A" in r.problems
    assert "domain B never reclaimed its machine" in r.problems
    assert r.figures["agreed_to_idle_s"] is None
    assert "not measured" in format_summary(r, {})


def test_a_requeued_job_that_finished_elsewhere_and_an_unfinished_job_are_reported():
    bad = f"start a-v1-0 {T0 + 26}\nstart b-node9 {T0 + 45}\ndone b-node9 {T0 + 60}\n"
    r = _report(jobs=[parse_job_output("2", OUT_VM), parse_job_output("3", bad),
                      parse_job_output("4", f"start a-node1 {T0}\n")])
    assert any("job 3" in p and "b-node9" in p for p in r.problems)
    assert any("jobs without a finished run in their output: 4" in p for p in r.problems)


def test_output_lines_that_are_not_the_jobs_are_ignored():
    run = parse_job_output("9", "slurmstepd: error: something\nstart a-node1 12.5\ngarbage\ndone a-node1 13\n")
    assert run.starts == [("a-node1", 12.5)] and run.dones == [("a-node1", 13.0)]
    assert run.requeued_from == []


def test_asks_the_lender_turned_down_make_one_line():
    declined = [_contract(f"a-d{i}", "borrower", [], [(12.0 + 2 * i, None, "proposed"),
                                                      (12.05 + 2 * i, "proposed", "closed")])
                for i in range(5)]
    r = _report(a_contracts=A + declined)
    lines = [e.what for e in r.events if e.who == "A" and "asked again" in e.what]
    assert lines == ["asked again 5 time(s) without an agreement: proposed->closed"]
    assert not any("a-d3" in e.what for e in r.events)
