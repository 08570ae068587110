from broker.policy import DomainPolicy
from broker.simulator.engine import SimConfig
from broker.simulator.presets import demo_workloads
from broker.simulator.runner import run_scenario


def test_two_processes_give_the_same_results_as_one():
    workloads = demo_workloads(5)
    policies = [DomainPolicy(), DomainPolicy()]
    parallel = run_scenario(workloads, policies, SimConfig(), parallel=True)
    serial = run_scenario(workloads, policies, SimConfig(), parallel=False)
    assert [r.sharing for r in parallel] == [r.sharing for r in serial] == [True, False]
    for a, b in zip(parallel, serial):
        assert a.summary == b.summary
        assert a.daily == b.daily
        assert repr(a.series) == repr(b.series)
    assert parallel[0].summary != parallel[1].summary  # sharing changed something


def test_no_sharing_config_runs_once():
    runs = run_scenario(demo_workloads(5), [DomainPolicy()] * 2, SimConfig(sharing=False))
    assert len(runs) == 1 and not runs[0].sharing
    assert all(d["borrowed_node_hours"] == 0 for d in runs[0].summary.values())
