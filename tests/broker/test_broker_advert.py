"""A lender advertises idle hosts, and the borrower takes them without asking: two brokers
over the real API, each on its own real Slurm (the borrow playbook's stand-in VM joins the
borrower's Slurm)."""

from __future__ import annotations

import asyncio

import pytest
from broker_harness import api, free_port, make_pki, standin_vars, stop_standins, write_config
from broker_slurm import reset

from broker.negotiation.contracts import ContractState, Role
from broker.service.config import load_config
from broker.service.runtime import build

pytestmark = [pytest.mark.root, pytest.mark.slow]
S = ContractState


def test_a_lender_advertises_and_the_borrower_takes_the_advert_without_asking(tmp_path, slurm, slurm_b):
    pki = make_pki(tmp_path / "pki")
    pa, pb = free_port(), free_port()
    vms = tmp_path / "vms"
    vms.mkdir()
    extra = {"executor": {"extravars": standin_vars(slurm, vms)}}
    conf_a = write_config(tmp_path / "a.yml", "a", pa, pki, {"b": pb}, slurm, extra)
    conf_b = write_config(tmp_path / "b.yml", "b", pb, pki, {"a": pa}, slurm_b, {
        **extra, "policy": {"lending": {"advertise": True}}})

    async def scenario():
        a, b = build(load_config(conf_a)), build(load_config(conf_b))
        async with api(a), api(b):
            await b.tick()  # nobody needs nodes: A declines the advert, B rests
            assert a.store.contracts() == [] and b.store.contracts() == []
            [refused] = b.store.refusals()
            assert refused.peer == "a" and "no need now" in refused.last_reason
            b.quiet_until.clear()

            for _ in range(4):  # now A's demand exceeds its 2 nodes
                slurm.run("sbatch", "-o", "/dev/null", "-N1", "--wrap", "sleep 300")
            slurm.wait("two running", lambda: slurm.run("squeue", "-h", "-t", "R").count("\n") == 2)
            await b.tick()  # B advertises; A takes it (A never ticks, so never asks)
            await a.drain()
            await b.drain()
            [ca] = a.store.contracts()
            [cb] = b.store.contracts()
            assert ca.id == cb.id and ca.role is Role.BORROWER and cb.role is Role.LENDER
            assert ca.state is S.ACTIVE, ca.reason
            assert [t.to_state for t in a.store.history(ca.id)][:2] == [S.PROPOSED, S.AGREED]
            assert [n.name for n in b.scheduler.snapshot().lent] == [cb.host_names[0]]
            assert a.scheduler.snapshot().node(ca.node_names[0]) is not None
            await b.heartbeat("a")
            assert b.store.get(cb.id).state is S.ACTIVE  # B follows A's progress

            slurm.run("scancel", "-u", "root")
            await a.give_back(ca, "test over")
            await b.drain()
            assert b.store.get(cb.id).state is S.CLOSED

    try:
        asyncio.run(scenario())
    finally:
        stop_standins(slurm)
        reset(slurm)
        reset(slurm_b)
