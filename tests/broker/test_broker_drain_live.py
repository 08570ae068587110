"""Drain honoured live: two brokers over the real API, each on its own real Slurm.

The lender's policy reclaims by ``drain``. When its own demand comes back while the
borrower's job runs on the loan, nothing is preempted: the lender drains the loan, the
borrower's Slurm keeps new jobs off the lent node (drained with ``viocluster-draining:<id>``)
while the job runs on, and the node goes back once that job has ended.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from broker_harness import api, free_port, make_pki, standin_vars, standin_vm_probe, stop_standins, write_config
from broker_slurm import reset

from broker.negotiation.contracts import ContractState
from broker.service.config import load_config
from broker.service.runtime import build

pytestmark = [pytest.mark.root, pytest.mark.slow]
S = ContractState


def _submit(cluster, *args):
    return cluster.run("sbatch", "--parsable", "-o", "/dev/null", *args).strip()


def _show(cluster, job):
    return cluster.run("scontrol", "show", "job", job)


def test_drain_preempts_nothing_and_the_borrower_keeps_new_jobs_off_the_node(tmp_path, slurm, slurm_b):
    pki = make_pki(tmp_path / "pki")
    pa, pb = free_port(), free_port()
    vms = tmp_path / "vms"
    vms.mkdir()
    extra = {"executor": {"extravars": standin_vars(slurm, vms)}}
    conf_a = write_config(tmp_path / "a.yml", "a", pa, pki, {"b": pb}, slurm, extra)
    conf_b = write_config(tmp_path / "b.yml", "b", pb, pki, {"a": pa}, slurm_b, {
        **extra, "probes": {"vms": standin_vm_probe(slurm, vms)},
        "policy": {"reclamation": {"mode": "drain"}}})

    async def scenario():
        a, b = build(load_config(conf_a)), build(load_config(conf_b))
        async with api(a), api(b):
            for _ in range(4):  # A's demand exceeds its 2 nodes
                _submit(slurm, "-N1", "--wrap", "sleep 300")
            slurm.wait("two running", lambda: slurm.run("squeue", "-h", "-t", "R").count("\n") == 2)
            await a.tick()
            await a.drain()
            [ca] = a.store.contracts()
            assert ca.state is S.ACTIVE, ca.reason
            [node] = ca.node_names
            # the borrower's job on the lent node: it must end by itself, not be preempted
            first = _submit(slurm, "-p", "loan", "-C", "borrowed", "--wrap", "sleep 20")
            slurm.wait("job on the borrowed node", lambda: slurm.run(
                "squeue", "-h", "-j", first, "-o", "%T %N").split() == ["RUNNING", node])
            await a.tick()  # A sees its job there (its answer to B's heartbeat says so)

            # B's own demand comes back: 2 jobs on its 1 remaining node
            for _ in range(2):
                _submit(slurm_b, "-N1", "--wrap", "sleep 300")
            slurm_b.wait("B's job running", lambda: "RUNNING" in slurm_b.run("squeue", "-h", "-o", "%T"))
            await b.heartbeat("a")
            await b.tick()  # drain, not reclaim; its heartbeat tells A the loan drains
            await b.drain()
            assert b.draining == {ca.id: "own demand needs 1 node(s)"}
            assert b.store.get(ca.id).state is S.ACTIVE
            assert a.store.get(ca.id).state is S.ACTIVE
            # A's Slurm keeps new jobs off the node; the job there runs on
            listed = slurm.run("sinfo", "-h", "-N", "-n", node, "-o", "%T|%E").strip()
            assert listed == f"draining|viocluster-draining:{ca.id}", listed
            second = _submit(slurm, "-p", "loan", "-C", "borrowed", "--wrap", "sleep 300")
            until = time.monotonic() + 6  # several of Slurm's scheduling passes
            while time.monotonic() < until:
                assert slurm.job_state(second) == "PENDING"
                assert slurm.job_state(first) == "RUNNING"
                await a.tick()
                await b.tick()
                await b.drain()
                assert b.store.get(ca.id).state is S.ACTIVE  # nothing taken back yet
                await asyncio.sleep(1)

            # the job ends by itself; then the node goes back
            slurm.wait("the first job ended", lambda: slurm.job_state(first) == "", 60)
            deadline = time.monotonic() + 30
            while b.store.get(ca.id).state is not S.CLOSED and time.monotonic() < deadline:
                await a.tick()
                await b.tick()
                await b.drain()
                await asyncio.sleep(0.5)
            cb = b.store.get(ca.id)
            assert cb.state is S.CLOSED, cb.reason
            reasons = [t.reason for t in b.store.history(ca.id)]
            assert any(r.startswith("drained") for r in reasons), reasons
            assert a.store.get(ca.id).state is S.CLOSED
            assert "requeued 0 job(s)" in a.store.get(ca.id).reason
            # zero preemptions: the first job completed on the node, once
            shown = _show(slurm, first)
            assert "JobState=COMPLETED" in shown and "Restarts=0" in shown, shown
            assert f"NodeList={node}" in shown
            # the second job never ran there, and the node is gone from A's Slurm
            assert slurm.job_state(second) == "PENDING"
            assert "Restarts=0" in _show(slurm, second)
            assert a.scheduler.snapshot().node(node) is None
            assert b.scheduler.snapshot().lent == ()
            assert b.draining == {}

    try:
        asyncio.run(scenario())
    finally:
        stop_standins(slurm)
        reset(slurm)
        reset(slurm_b)
