"""Three domains: the borrower asks every peer it trusts and takes the offer that fits best."""

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


def test_the_borrower_asks_every_peer_and_takes_the_best_fitting_offer(tmp_path, slurm, slurm_b, slurm_c):
    pki = make_pki(tmp_path / "pki")
    pa, pb, pc = free_port(), free_port(), free_port()
    vms = tmp_path / "vms"
    vms.mkdir()
    extra = {"executor": {"extravars": standin_vars(slurm, vms)}}
    conf_a = write_config(tmp_path / "a.yml", "a", pa, pki, {"b": pb, "c": pc}, slurm,
                          {**extra, "needs": {"cpus": 1, "memory_mb": 100, "disk_gb": 0}})
    conf_b = write_config(tmp_path / "b.yml", "b", pb, pki, {"a": pa, "c": pc}, slurm_b, extra)
    # C's lending hosts answer no ping (an address nobody has): no RTT, so C's offer ranks last
    conf_c = write_config(tmp_path / "c.yml", "c", pc, pki, {"a": pa, "b": pb}, slurm_c, {
        **extra,
        "lending": {"hosts": [{"node": n, "address": "10.204.77.77", "account": "vbka",
                               "disk_path": str(tmp_path)} for n in ("n1", "n2")]},
    })

    async def scenario():
        a, b, c = (build(load_config(x)) for x in (conf_a, conf_b, conf_c))
        async with api(a), api(b), api(c):
            for _ in range(3):  # 3 one-node jobs on A's 2 nodes: A needs 1 more
                slurm.run("sbatch", "-o", "/dev/null", "-N1", "--wrap", "sleep 300")
            slurm.wait("two running", lambda: slurm.run("squeue", "-h", "-t", "R").count("\n") == 2)
            await a.tick()
            await a.drain()
            mine = {x.lender: x for x in a.store.contracts()}
            assert set(mine) == {"b"}  # the declined offer of C is not kept as a contract...
            assert mine["b"].state is S.ACTIVE, mine["b"].reason
            [refused] = a.store.refusals()  # ... but counted against C, with the reason
            assert (refused.peer, refused.count) == ("c", 1)
            assert "other offers fit better" in refused.last_reason
            [cb] = b.store.contracts()
            assert cb.state is S.ACTIVE and cb.role is Role.LENDER
            assert c.store.contracts() == []  # C offered, was declined: counted there too
            [theirs] = c.store.refusals()
            assert theirs.peer == "a" and "declined by a: other offers fit better" in theirs.last_reason
            assert [n.name for n in c.scheduler.snapshot().lent] == []
            # clean up: A gives the node back
            slurm.run("scancel", "-u", "root")
            await a.give_back(mine["b"], "test over")
            await asyncio.sleep(0)
            await b.drain()
            assert b.store.get(cb.id).state is S.CLOSED

    try:
        asyncio.run(scenario())
    finally:
        stop_standins(slurm)
        for cluster in (slurm, slurm_b, slurm_c):
            reset(cluster)
