"""Invariant checks run after every event batch of a simulation under test."""

from __future__ import annotations

from collections import Counter

from broker.simulator.engine import HALTING, UP, Simulation


def check(sim: Simulation) -> None:
    domains = sim.domains
    lent_by_pair: Counter = Counter()
    vms_by_pair: Counter = Counter()
    for d in domains:
        busy = sum(d.size[j] for _, j in d.run_phys)
        # capacity never exceeded: own nodes busy + lent + free = capacity, none negative
        assert d.free >= 0 and d.lent >= 0, (d.name, d.free, d.lent)
        assert busy + d.free + d.lent == d.capacity, (d.name, busy, d.free, d.lent)
        phys_jobs = {j for _, j in d.run_phys}
        vm_jobs = set(d.job_vms)
        # no job on mixed VM and physical nodes
        assert not phys_jobs & vm_jobs
        for j, vms in d.job_vms.items():
            assert len(vms) == d.size[j]
            assert all(vm.job == j and vm.borrower == d.index for vm in vms)
            assert all(vm.state != HALTING for vm in vms)
        for vm in d.idle_vms:
            assert vm.state == UP and vm.job == -1
        assert len(set(map(id, d.idle_vms))) == len(d.idle_vms)
        for vm in d.vms.values():
            vms_by_pair[(vm.lender, vm.borrower)] += 1
            assert vm.lender != d.index
        lent_by_pair[d.index] = d.lent
        assert d.active_vms == sum(1 for vm in d.vms.values() if vm.state != HALTING)
        assert d.waiting_nodes == sum(d.size[j] for j in d.queue)
        assert d.running_nodes == sum(d.size[j] for j in phys_jobs | vm_jobs)
    # nodes lent == nodes borrowed, in total and per lender, at every instant
    assert sum(d.lent for d in domains) == sum(len(d.vms) for d in domains)
    for d in domains:
        assert d.lent == sum(c for (lender, _), c in vms_by_pair.items() if lender == d.index)


def run_checked(sim: Simulation):
    finished: Counter = Counter()
    original = sim.finish

    def finish(d, j, now):
        finished[(d.index, j)] += 1
        original(d, j, now)

    sim.finish = finish
    sim.on_check = check
    result = sim.run()
    return result, finished
