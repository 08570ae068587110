import math

import pytest
from sim_helpers import check, run_checked

from broker.policy import (
    DomainPolicy,
    LendingPolicy,
    Mode,
    ReclamationPolicy,
    Terms,
    parse_window,
)
from broker.simulator.engine import SimConfig, Simulation
from broker.simulator.metrics import run_summary
from broker.simulator.presets import demo_workloads
from broker.simulator.synthetic import BurstSpec, synthetic_workload
from broker.simulator.workload import CapacityError, Workload


def wl(name, cap, jobs):
    """jobs: (submit, runtime, nodes[, estimate])"""
    return Workload(
        name, cap,
        submit=[float(j[0]) for j in jobs], runtime=[float(j[1]) for j in jobs],
        nodes=[j[2] for j in jobs], estimate=[float(j[3] if len(j) > 3 else j[1]) for j in jobs],
    )


def small_demo(seed=3, days=8):
    a = synthetic_workload("a", 32, seed, BurstSpec(load=0.4, days=days,
                                                    burst_every_s=2 * 86400, burst_factor=6))
    b = synthetic_workload("b", 32, seed + 1, BurstSpec(load=0.25, days=days,
                                                        burst_every_s=3 * 86400))
    return [a, b]


def test_borrow_run_on_vms_slower_then_preempt_and_rerun():
    # B: a 4-node job holds all its nodes, a 2-node job waits; A is idle until t=4000
    a = wl("a", 4, [(4000, 100, 4)])
    b = wl("b", 4, [(0, 10000, 4), (1, 5000, 2)])
    sim = Simulation([a, b], config=SimConfig())
    result, finished = run_checked(sim)
    da, db = result.domains
    # t=3600: A lends half of its 4 idle nodes; VMs up at 3640; job 1 runs 15 % slower on them
    # t=7200: A needs its nodes for its 4-node job: reclaims at once, job 1 is preempted
    # t=7216: nodes back after the halt delay; A's job runs; t=10000: B's job 0 ends and
    # job 1 restarts from zero on physical nodes (physical preferred), ending at 15000
    assert da.start[0] == 7216 and da.end[0] == 7316
    assert db.end[1] == 15000 and db.start[1] == 10000
    assert db.attempt[1] == 1
    s = run_summary(result)
    assert s["b"]["preemptions"] == 1
    assert s["b"]["lost_node_seconds"] == pytest.approx(2 * (7200 - 3640))
    assert db.stats.borrowed_node_seconds == 2 * (7216 - 3600)
    assert s["b"]["borrowed_node_hours"] == pytest.approx(2 * (7216 - 3600) / 3600, abs=1e-3)
    assert s["a"]["lent_node_hours"] == s["b"]["borrowed_node_hours"]
    assert all(c == 1 for c in finished.values()) and len(finished) == 3


def test_vm_slowdown_applies_to_jobs_on_vms():
    a = wl("a", 4, [])
    b = wl("b", 4, [(0, 10000, 4), (1, 1000, 2)])
    result, _ = run_checked(Simulation([a, b], config=SimConfig(slowdown=0.15)))
    db = result.domains[1]
    assert db.start[1] == 3640 and db.end[1] == pytest.approx(3640 + 1150)


def test_no_sharing_never_trades():
    a = wl("a", 4, [])
    b = wl("b", 4, [(0, 10000, 4), (1, 1000, 2)])
    result, _ = run_checked(Simulation([a, b], config=SimConfig(sharing=False)))
    assert result.domains[1].start[1] == 10000
    assert all(d.stats.borrowed_node_seconds == 0 for d in result.domains)


def test_easy_backfills_without_delaying_the_head():
    # 4 nodes: job0 uses 3 until 100; job1 (4 nodes) must wait until 100;
    # job2 (1 node, 50 s) backfills now; job3 (1 node, 500 s) would delay job1: waits
    w = wl("x", 4, [(0, 100, 3), (1, 10, 4), (2, 50, 1), (3, 500, 1)])
    result, _ = run_checked(Simulation([w], config=SimConfig(sharing=False)))
    d = result.domains[0]
    assert d.start[2] == 2
    assert d.start[1] == 100
    assert d.start[3] == 110


def test_capacity_below_largest_job_is_refused():
    with pytest.raises(CapacityError, match="capacity 2 is below its largest job"):
        Simulation([wl("x", 2, [(0, 10, 3)])])


@pytest.mark.parametrize("mode", list(Mode))
def test_invariants_hold_under_every_reclamation_mode(mode):
    terms = Terms(mode, lease_s=7200, per_interval=2)
    policy = DomainPolicy(reclamation=ReclamationPolicy(terms))
    workloads = small_demo()
    sim = Simulation(workloads, [policy, policy], SimConfig(interval=1800))
    result, finished = run_checked(sim)
    total = sum(len(w) for w in workloads)
    # every job finishes exactly once
    assert len(finished) == total and set(finished.values()) == {1}
    for d in result.domains:
        assert all(e >= 0 for e in d.end)
        assert all(d.end[j] >= d.submit[j] + d.run[j] for j in range(len(d.w)))
    borrowed = sum(d.stats.borrowed_node_seconds for d in result.domains)
    lent = sum(d.stats.lent_node_seconds for d in result.domains)
    assert borrowed > 0 and math.isclose(borrowed, lent)
    preempted = [(d, j) for d in result.domains for j in range(len(d.w)) if d.attempt[j]]
    if mode is Mode.DRAIN:
        assert not preempted
    if mode in (Mode.IMMEDIATE, Mode.GRADUAL):
        assert preempted  # and each of them reran to the end
        assert all(d.end[j] >= 0 and d.start[j] >= 0 for d, j in preempted)


def test_same_seed_same_results_other_seed_differs():
    def once(seed):
        result = Simulation(demo_workloads(seed), config=SimConfig()).run()
        return run_summary(result), repr([d.series for d in result.domains])

    first, again, other = once(7), once(7), once(8)
    assert first == again
    assert first[0] != other[0]


def test_lending_policy_limits_are_obeyed():
    stingy = DomainPolicy(lending=LendingPolicy(max_lent=3))
    workloads = small_demo(seed=5)
    seen = []
    sim = Simulation(workloads, [stingy, stingy], SimConfig(interval=1800))
    sim.on_check = lambda s: seen.append(max(d.lent for d in s.domains))
    sim.run()
    assert max(seen) == 3
    closed = DomainPolicy(lending=LendingPolicy(enabled=False))
    result = Simulation(small_demo(seed=5), [closed, closed], SimConfig()).run()
    assert all(d.stats.lent_node_seconds == 0 for d in result.domains)


def test_numpy_backfill_scan_matches_the_plain_loop(monkeypatch):
    import broker.simulator.engine as engine

    def once(vector_min):
        monkeypatch.setattr(engine, "VECTOR_MIN", vector_min)
        workloads = small_demo(seed=11, days=10)
        result, _ = run_checked(Simulation(workloads, config=SimConfig(interval=1800)))
        return run_summary(result), [d.start for d in result.domains]

    vector, plain = once(4), once(10**9)
    assert vector == plain
    assert max(len(w) for w in small_demo(seed=11, days=10)) > 4


def test_lending_window_is_read_on_the_simulated_clock():
    # epoch 0 = midnight UTC; the lender lends only in 03:00-03:59 of each day
    lender = DomainPolicy(lending=LendingPolicy(windows=(parse_window("03:00-04:00"),)))
    workloads = small_demo(seed=9, days=6)
    sim = Simulation(workloads, [lender, lender], SimConfig(interval=1800, epoch=0.0))
    grants = []
    original = sim.lend

    def lend(l, b, count, now):
        grants.append(now)
        original(l, b, count, now)

    sim.lend = lend
    sim.run()
    assert grants
    assert all(10800 <= t % 86400 < 14400 for t in grants)


@pytest.mark.traces
@pytest.mark.slow
def test_whole_real_traces_sharing_run(traces):
    from broker.simulator.swf import read_swf
    from broker.simulator.workload import from_trace

    workloads = [from_trace("osc", read_swf(traces / "OSC-Clust.swf.gz"), 57),
                 from_trace("ctc", read_swf(traces / "CTC-SP2.swf.gz"), 338)]
    sim = Simulation(workloads, config=SimConfig())
    result = sim.run()
    assert sim.finished == 77222 + 36097
    for d in result.domains:
        assert all(e >= 0 for e in d.end) and d.free + d.lent <= d.capacity
    s = run_summary(result)
    assert s["osc"]["jobs"] == 36097 and s["ctc"]["jobs"] == 77222
    assert s["osc"]["lent_node_hours"] == pytest.approx(s["ctc"]["borrowed_node_hours"])
    assert s["ctc"]["lent_node_hours"] == pytest.approx(s["osc"]["borrowed_node_hours"])
    assert s["ctc"]["preemptions"] > 0


def test_halting_a_draining_busy_vm_counts_it_once():
    # B's 2-node job runs on A's VMs from 3640; at 7200 one VM is drained, then halted: the job
    # is preempted, the VM must leave once (a second VM-down would fail the checks or the run)
    a = wl("a", 4, [])
    b = wl("b", 4, [(0, 10000, 4), (1, 5000, 2)])
    sim = Simulation([a, b], config=SimConfig())
    original = sim.sample
    done = []

    def sample(now):
        original(now)
        db = sim.domains[1]
        if now == 7200 and not done:
            vm = db.job_vms[1][0]
            sim.drain(vm, now)
            sim.halt(vm, now)
            done.append(vm)

    sim.sample = sample
    sim.on_check = check
    result = sim.run()
    assert done and result.domains[1].stats.preemptions == 1
    assert result.domains[1].end[1] > 7200


def test_physical_nodes_preferred_over_idle_vms():
    # B borrows 2 VMs for a short job; later both its own nodes and the idle VMs are free
    a = wl("a", 4, [])
    b = wl("b", 4, [(0, 5000, 4), (1, 100, 2), (6000, 50, 2)])
    sim = Simulation([a, b], config=SimConfig())
    on_vms = []
    original = sim.start_vms

    def start_vms(d, j, now):
        on_vms.append((d.name, j, len(d.idle_vms), d.free))
        original(d, j, now)

    sim.start_vms = start_vms
    result, _ = run_checked(sim)
    db = result.domains[1]
    assert on_vms == [("b", 1, 2, 0)]  # only job 1, while B's own nodes were all busy
    assert db.start[2] == 6000 and db.end[2] == 6050  # physical: no slowdown


def test_lease_returns_every_vm_by_lease_end():
    lease = DomainPolicy(reclamation=ReclamationPolicy(Terms(Mode.LEASE, lease_s=5400)))
    sim = Simulation(small_demo(seed=4), [lease, lease], SimConfig(interval=1800))
    lives = []
    original = sim.vm_down

    def vm_down(vm, now):
        lives.append(now - vm.started)
        original(vm, now)

    sim.vm_down = vm_down
    sim.on_check = check
    sim.run()
    assert lives
    # a lease ends at the first broker round at or after started + lease_s, then the VM halts
    assert max(lives) <= 5400 + 1800 + sim.cfg.halt_delay
    assert max(lives) >= 5400


def test_utilization_counts_lent_work_after_the_domains_last_job():
    # A's only job ends at 10; from 3640 B's 2-node job runs on two VMs A lent, 15 % slower,
    # until 3640 + 11500. That work is A's (its nodes were busy): the time it is divided by
    # must run to 15140 too, or utilization comes out far above 1.
    a = wl("a", 4, [(0, 10, 1)])
    b = wl("b", 4, [(0, 20000, 4), (1, 10000, 2)])
    result, _ = run_checked(Simulation([a, b], config=SimConfig()))
    assert result.domains[1].start[1] == 3640
    s = run_summary(result)
    assert s["a"]["utilization"] == pytest.approx((10 + 2 * 11500) / (4 * 15140), abs=1e-5)
    for mode in Mode:
        policy = DomainPolicy(reclamation=ReclamationPolicy(Terms(mode, lease_s=7200)))
        result = Simulation(small_demo(seed=6), [policy, policy], SimConfig(interval=1800)).run()
        assert all(0 < d["utilization"] <= 1 for d in run_summary(result).values())


@pytest.mark.parametrize("deadline, preempted", [(None, 0), (1000.0, 1)])
def test_drain_waits_for_the_job_or_takes_it_back_at_the_drain_deadline(deadline, preempted):
    # t=600: A lends 2 idle nodes to B, whose 2-node job runs on them from 640 (to 6390 at
    # the VMs' slowdown); t=4000: A's 4-node job arrives; t=4200: A drains the busy loans.
    # Without a deadline the job ends by itself; with 1000 s, the round at 5400 takes the
    # loans back and the job is requeued.
    a = wl("a", 4, [(4000, 100, 4)])
    b = wl("b", 4, [(0, 10000, 4), (1, 5000, 2)])
    drain = DomainPolicy(reclamation=ReclamationPolicy(
        Terms(Mode.DRAIN, drain_deadline_s=deadline)))
    sim = Simulation([a, b], [drain, drain], SimConfig(interval=600))
    result, _ = run_checked(sim)
    da, db = result.domains
    assert db.stats.preemptions == preempted
    if deadline is None:
        assert db.end[1] == pytest.approx(640 + 5000 * 1.15) and da.start[0] > db.end[1]
    else:
        assert da.start[0] == pytest.approx(5400 + SimConfig().halt_delay)
        assert db.attempt[1] == 1
