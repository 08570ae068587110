"""Two brokers trade a node over the real mutual-TLS API on loopback.

Each domain has its own real Slurm (its own namespace). The borrow playbook run by A's
executor starts a dynamic slurmd in A's Slurm where a COW VM would boot (a second slurmd
stands in for the VM: the VM plane is exercised in its own tests); B's reclaim playbook stops it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.negotiation.contracts import ContractState, Role
from broker.service.config import load_config
from broker.service.runtime import build
from broker_harness import api, free_port, make_pki, standin_vars, standin_vm_probe, stop_standins, write_config
from broker_slurm import reset

pytestmark = [pytest.mark.root, pytest.mark.slow]
S = ContractState


def _submit(cluster, *args):
    return cluster.run("sbatch", "--parsable", "-o", "/dev/null", *args).strip()


@pytest.fixture
def domains(tmp_path, slurm, slurm_b):
    pki = make_pki(tmp_path / "pki")
    pa, pb = free_port(), free_port()
    vms = tmp_path / "vms"
    vms.mkdir()
    # B's reclaim playbook stops the stand-in "VM", which runs in A's Slurm namespace
    extra = {"executor": {"extravars": standin_vars(slurm, vms)}}
    # A gives its borrowed VMs addresses from a pool of its virtual subnet
    conf_a = write_config(tmp_path / "a.yml", "a", pa, pki, {"b": pb}, slurm,
                          {**extra, "vm_addresses": {"pool": "10.207.1.64/26", "prefixlen": 24}})
    # the lender stops a VM at once through its VM probe, then runs reclaim.yml to clean up
    conf_b = write_config(tmp_path / "b.yml", "b", pb, pki, {"a": pa}, slurm_b,
                          {**extra, "probes": {"vms": standin_vm_probe(slurm, vms)}})
    yield conf_a, conf_b, vms
    stop_standins(slurm)
    reset(slurm)
    reset(slurm_b)


def test_two_brokers_trade_a_node_and_the_lender_reclaims_it(domains, slurm, slurm_b):
    conf_a, conf_b, vms = domains

    async def scenario():
        a, b = build(load_config(conf_a)), build(load_config(conf_b))
        async with api(a), api(b):
            # A's demand exceeds its nodes: 4 one-node jobs on 2 nodes
            jobs = [_submit(slurm, "-N1", "--wrap", "sleep 300") for _ in range(4)]
            slurm.wait("two running", lambda: slurm.run("squeue", "-h", "-t", "R").count("\n") == 2)
            t0 = time.monotonic()
            await a.tick()
            await a.drain()
            trade_s = time.monotonic() - t0

            [ca] = a.store.contracts()
            [cb] = b.store.contracts()
            assert ca.id == cb.id and ca.role is Role.BORROWER and cb.role is Role.LENDER
            assert ca.state is S.ACTIVE, ca.reason
            # B offered from its lending policy: half of its 2 idle nodes, measured now
            [host] = cb.offered
            assert host.name == "n1" and host.site == "site-b" and host.cpus == 1
            assert host.memory_mb > 0 and host.rtt_ms is not None and host.disk_gb >= 0
            assert ca.nodes == cb.nodes and len(ca.nodes) == 1
            node = ca.node_names[0]
            # both persisted the agreement before A provisioned anything
            hist_a = {t.to_state: t.at for t in a.store.history(ca.id)}
            hist_b = {t.to_state: t.at for t in b.store.history(cb.id)}
            assert hist_a[S.AGREED] <= hist_b[S.AGREED] <= hist_a[S.PROVISIONING]
            # the lender drained the lent node; the borrower's Slurm has the VM's node
            assert [n.name for n in b.scheduler.snapshot().lent] == ["n1"]
            assert a.scheduler.snapshot().node(node).idle
            assert b.store.get(cb.id).state is S.ACTIVE  # followed A through the heartbeat
            assert (vms / "vms").read_text().split() == [node]
            # the VM got the pool's first address, kept with the contract, passed to the playbook
            assert ca.addresses == ((node, "10.207.1.64/24"),) and cb.addresses == ()
            assert (vms / "ips").read_text().split() == [node, "10.207.1.64/24"]

            # a job runs on the borrowed node
            job = _submit(slurm, "-p", "loan", "-C", "borrowed", "--wrap", "sleep 300")
            slurm.wait("job on the borrowed node",
                       lambda: slurm.run("squeue", "-h", "-j", job, "-o", "%T %N").split() == ["RUNNING", node])

            # B's own demand comes back: 2 jobs on its 1 remaining node -> reclaim
            [_submit(slurm_b, "-N1", "--wrap", "sleep 300") for _ in range(2)]
            slurm_b.wait("B's job running", lambda: "RUNNING" in slurm_b.run("squeue", "-h", "-o", "%T"))
            t1 = time.monotonic()
            await b.tick()
            await b.drain()
            reclaim_s = time.monotonic() - t1

            assert b.store.get(cb.id).state is S.CLOSED, b.store.get(cb.id).reason
            assert a.store.get(ca.id).state is S.CLOSED
            assert a.scheduler.snapshot().node(node) is None
            assert slurm.job_state(job) == "PENDING"
            assert "Restarts=1" in slurm.run("scontrol", "show", "job", job)
            assert (vms / "vms").read_text().split() == []
            assert not (slurm.dir / f"slurmd-{node}.pid").exists()
            assert b.scheduler.snapshot().lent == ()
            assert a.store.addresses_in_use() == {}  # the closed contract freed its address
            ha = {t.to_state: t.at for t in a.store.history(ca.id)}
            hb = {t.to_state: t.at for t in b.store.history(cb.id)}
            print(f"\nTRADE ask->agreed {ha[S.AGREED] - ha[S.PROPOSED]:.2f} s; "
                  f"agreed->node idle in A's Slurm {ha[S.ACTIVE] - ha[S.AGREED]:.2f} s "
                  f"(borrow playbook {ha[S.ACTIVE] - ha[S.PROVISIONING]:.2f} s incl. admission); "
                  f"tick->active {trade_s:.2f} s")
            print(f"RECLAIM request->A's node down, job requeued, node deleted "
                  f"{ha[S.CLOSED] - hb[S.RECLAIMING]:.2f} s; request->VM gone "
                  f"{b.metrics.registry.get_sample_value('viocluster_reclaim_seconds_sum'):.2f} s; "
                  f"request->lender closed (reclaim playbook included) "
                  f"{hb[S.CLOSED] - hb[S.RECLAIMING]:.2f} s; tick->closed {reclaim_s:.2f} s")
            return jobs

    asyncio.run(scenario())
