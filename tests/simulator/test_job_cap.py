"""reclamation.max_job_s: a lender caps the length of the borrower's jobs its loans may run (as a
borrowed partition's MaxTime would); long jobs stay off borrowed nodes, short ones use them, and
without a cap nothing changes."""

from __future__ import annotations

import pytest
from sim_helpers import run_checked
from swf_helpers import swf_line, write_swf
from test_engine import small_demo, wl

from broker.errors import ConfigError
from broker.policy import DomainPolicy, Mode, ReclamationPolicy, Terms
from broker.policy.loader import parse_policy
from broker.simulator.engine import LOG_HALT, LOG_LEND, LOG_START, SimConfig, Simulation
from broker.simulator.invariants import check_run
from broker.simulator.metrics import run_summary
from broker.simulator.swf import read_swf
from broker.simulator.workload import from_trace


def capped(max_job_s, mode=Mode.DRAIN):
    return DomainPolicy(reclamation=ReclamationPolicy(Terms(mode=mode, max_job_s=max_job_s)))


def run(workloads, policies, **cfg):
    sim = Simulation(workloads, policies, SimConfig(check_invariants=True, **cfg))
    result, finished = run_checked(sim)
    assert all(c == 1 for c in finished.values())
    report = check_run(result, sim.log, sim.cfg, run_summary(result))
    assert report.ok, report.violations
    return result


def idle_lender_and_busy_borrower(job1):
    # B's 4-node job holds all its nodes until 10000; job 1 (2 nodes) waits; A is idle and
    # lends 2 nodes at 3600, up at 3640
    return [wl("a", 4, []), wl("b", 4, [(0, 10000, 4), job1])]


@pytest.mark.parametrize("mode", [Mode.DRAIN, Mode.IMMEDIATE])
def test_a_long_job_is_kept_off_borrowed_nodes(mode):
    # job 1 runs 1000 s but requests 7200 s: over A's cap of 3600 s
    result = run(idle_lender_and_busy_borrower((1, 1000, 2, 7200)),
                 [capped(3600, mode), DomainPolicy()])
    db = result.domains[1]
    assert db.start[1] == 10000 and not db.on_vms[1]
    # no waiting job fits A's cap, so B takes none of A's nodes (trade.choose with Waiting)
    assert db.stats.borrowed_node_seconds == 0


@pytest.mark.parametrize("request_s", [1000, 3600])
def test_a_job_within_the_cap_runs_on_borrowed_nodes(request_s):
    result = run(idle_lender_and_busy_borrower((1, 1000, 2, request_s)),
                 [capped(3600), DomainPolicy()])
    db = result.domains[1]
    assert db.start[1] == 3640 and db.on_vms[1]
    assert db.end[1] == pytest.approx(3640 + 1150)


def test_a_short_job_behind_a_long_one_takes_the_borrowed_nodes():
    # job 1 (too long for the loan) heads the queue; job 2 (short) starts on the VMs
    result = run([wl("a", 4, []),
                  wl("b", 4, [(0, 10000, 4), (1, 20000, 2, 20000), (2, 600, 2, 1800)])],
                 [capped(3600), DomainPolicy()])
    db = result.domains[1]
    assert db.start[1] == 10000 and not db.on_vms[1]
    assert db.start[2] == 3640 and db.on_vms[2]


def test_each_lender_caps_its_own_nodes():
    # A caps at 1 h, C lends without a cap; B's 5-h job 1 may run only on C's VMs, its 1000-s
    # job 2 on anyone's
    a, c = wl("a", 4, []), wl("c", 4, [])
    b = wl("b", 2, [(0, 50000, 2), (1, 18000, 2, 18000), (2, 1000, 2, 1000)])
    sim = Simulation([a, b, c], [capped(3600), DomainPolicy(), DomainPolicy()],
                     SimConfig(check_invariants=True))
    result = sim.run()
    assert check_run(result, sim.log, sim.cfg, run_summary(result)).ok
    lender = {e[3]: e[2] for e in sim.log if e[1] == LOG_LEND}
    ran_on = {e[3]: {lender[v] for v in e[5]} for e in sim.log if e[1] == LOG_START and e[5]}
    assert ran_on[1] == {2}  # C's nodes only
    assert 2 in ran_on


def test_no_cap_changes_nothing():
    for policies in ([DomainPolicy(), DomainPolicy()], [capped(None, Mode.IMMEDIATE)] * 2):
        base = Simulation(small_demo(seed=2), policies, SimConfig(interval=1800)).run()
        uncapped = Simulation(small_demo(seed=2), None, SimConfig(interval=1800)).run()
        for d0, d1 in zip(base.domains, uncapped.domains):
            assert d0.start == d1.start and d0.end == d1.end
    # a cap no job reaches changes nothing either
    demo = small_demo(seed=2)
    longest = max(max(w.estimate) for w in demo)
    huge = Simulation(demo, [capped(longest, Mode.IMMEDIATE)] * 2,
                      SimConfig(interval=1800)).run()
    for d0, d1 in zip(huge.domains, uncapped.domains):
        assert d0.start == d1.start and d0.end == d1.end
        assert d0.stats.preemptions == d1.stats.preemptions


def test_a_cap_on_a_busy_demo_keeps_every_long_job_off_loans():
    demo = small_demo(seed=2)
    result = run(demo, [capped(1800)] * 2, interval=1800)
    on_vms = 0
    for d in result.domains:
        for j in range(len(d.w)):
            if d.on_vms[j]:
                on_vms += 1
                assert d.est[j] <= 1800
    assert on_vms > 0


def test_requested_time_from_the_swf_else_the_run_time(tmp_path):
    # field 9: job 2 requests 7200 s (over the cap), job 3 requests nothing and runs 1000 s
    path = write_swf(tmp_path / "b.swf", [
        swf_line(1, 0, 10000, 4, req_time=10000),
        swf_line(2, 1, 1000, 2, req_time=7200),
        swf_line(3, 2, 1000, 2),
    ])
    b = from_trace("b", read_swf(path), capacity=4)
    assert b.estimate == [10000.0, 7200.0, 1000.0]
    result = run([wl("a", 4, []), b], [capped(3600), DomainPolicy()])
    db = result.domains[1]
    assert not db.on_vms[1] and db.start[1] == 10000
    assert db.on_vms[2] and db.start[2] == 3640


def test_the_invariant_check_catches_a_job_over_the_cap():
    sim = Simulation(idle_lender_and_busy_borrower((1, 1000, 2, 7200)), None,
                     SimConfig(check_invariants=True))
    result = sim.run()
    assert result.domains[1].on_vms[1]
    result.domains[0].policy = capped(3600)  # as if A had capped its loans
    report = check_run(result, sim.log, sim.cfg, run_summary(result))
    assert not report.ok and report.first.invariant == "job-cap"
    assert "job 2" in report.first.what and "3600" in report.first.what


def test_policy_file_field_and_its_errors():
    p = parse_policy({"reclamation": {"mode": "drain", "max_job_s": 14400}})
    assert p.reclamation.terms.max_job_s == 14400.0
    assert p.reclamation.terms.admits(14400) and not p.reclamation.terms.admits(14401)
    assert parse_policy({"reclamation": {"max_job_s": None}}).reclamation.terms.max_job_s is None
    assert parse_policy({}).reclamation.terms.max_job_s is None
    assert Terms().admits(1e12)
    for bad in (-1, 0, "4h", True, float("nan"), [3600]):
        with pytest.raises(ConfigError) as err:
            parse_policy({"reclamation": {"mode": "drain", "max_job_s": bad}}, "p.yml")
        msg = str(err.value)
        assert msg.startswith("p.yml: reclamation.max_job_s: got ")
        assert "expected a number of seconds > 0" in msg and "null (no cap)" in msg


def test_long_queues_scanned_with_numpy_obey_the_cap_as_the_plain_loop(monkeypatch):
    # a bursty domain with queues far above VECTOR_MIN while borrowed VMs sit idle
    import broker.simulator.engine as engine
    from broker.simulator.synthetic import BurstSpec, synthetic_workload

    def workloads():
        return [synthetic_workload("a", 32, 2, BurstSpec(load=0.7, days=6,
                                                         burst_every_s=2 * 86400,
                                                         burst_factor=8)),
                synthetic_workload("b", 32, 3, BurstSpec(load=0.3, days=6,
                                                         burst_every_s=3 * 86400))]

    scans = []
    plain_scan = engine.Simulation._backfill_vector

    def counted(self, d, *args):
        scans.append(bool(d.idle_vms))
        return plain_scan(self, d, *args)

    runs = []
    for vector_min in (48, 10**9):
        monkeypatch.setattr(engine, "VECTOR_MIN", vector_min)
        monkeypatch.setattr(engine.Simulation, "_backfill_vector", counted)
        runs.append(run(workloads(), [capped(1800)] * 2, interval=1800))
    assert sum(scans) > 100  # the numpy scan ran with idle VMs to place jobs on
    for d0, d1 in zip(*(r.domains for r in runs)):
        assert d0.start == d1.start and d0.end == d1.end
    assert sum(sum(d.on_vms) for d in runs[0].domains) > 0


def test_the_borrower_takes_only_what_fitting_jobs_need_and_gives_back_what_none_fits():
    # B's short job 1 fits A's 1-h cap, its long job 2 does not: at 3600 B takes 2 of A's
    # nodes (for job 1 only, though its need counts both jobs), job 1 runs on them; once it
    # has ended, no waiting job fits the VMs and the next round (7200) gives them back, where
    # before they were kept idle until job 0's end freed B's own nodes
    sim = Simulation([wl("a", 4, []),
                      wl("b", 4, [(0, 20000, 4), (1, 1000, 2, 1800), (2, 30000, 2, 30000)])],
                     [capped(3600), DomainPolicy()], SimConfig(check_invariants=True))
    result, _ = run_checked(sim)
    assert check_run(result, sim.log, sim.cfg, run_summary(result)).ok
    db = result.domains[1]
    assert db.on_vms[1] and db.start[1] == 3640
    assert not db.on_vms[2] and db.start[2] == 20000
    lent = [e for e in sim.log if e[1] == LOG_LEND]
    assert len(lent) == 2 and {e[0] for e in lent} == {3600}
    assert sorted(e[0] for e in sim.log if e[1] == LOG_HALT) == [7200, 7200]
