"""Brokers killed with SIGKILL in each contract state, then restarted.

Both brokers run as real ``viocluster broker run`` processes over mutual TLS, each on its own
real Slurm. The kill hits the broker's whole process group (as systemd's control-group kill
does), playbook runs included. VMs and switch peers are FAKE here: the stand-in playbooks
start a dynamic slurmd where a VM would boot and write the VM's name and the lending host's
name (the switch peer) into two files that the broker's VM and switch probes list and edit. The scheduler
side (borrowed node, requeue, lent node) is real.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from broker.negotiation.contracts import ContractState, Role
from broker_harness import BrokerProcess, free_port, make_pki, standin_vars, stop_standins, write_config
from broker_slurm import reset

pytestmark = [pytest.mark.root, pytest.mark.slow]
S = ContractState


@pytest.fixture
def pair(tmp_path, slurm, slurm_b):
    pki = make_pki(tmp_path / "pki")
    pa, pb = free_port(), free_port()
    files = tmp_path / "fake"
    files.mkdir()
    # the stand-in playbooks write the VMs on B's lending hosts to "vms" (B's VM probe lists
    # them) and the switch peers A's daemons get to "peers" (A's switch probe); A lends
    # nothing ("a-vms") and B borrows nothing ("b-peers")
    for name in ("vms", "peers", "a-vms", "b-peers"):
        (files / name).touch()

    def probe(name: str) -> dict:
        path = files / name
        return {"list": ["cat", str(path)], "remove": ["sed", "-i", f"/^{{name}}$/d", str(path)]}

    def make(pause_borrow: int = 0, pause_reclaim: int = 0, **settings: Any):
        extravars = {**standin_vars(slurm, files), "trade_test_pause": pause_borrow,
                     "trade_test_reclaim_pause": pause_reclaim}
        common = {"executor": {"extravars": extravars}, "offer_ttl_s": 30, "interval_s": 1,
                  "request_timeout_s": 4, **settings}
        ca = write_config(tmp_path / "a.yml", "a", pa, pki, {"b": pb}, slurm, {
            **common, "probes": {"vms": probe("a-vms"), "switch": probe("peers")}})
        cb = write_config(tmp_path / "b.yml", "b", pb, pki, {"a": pa}, slurm_b, {
            **common, "probes": {"vms": probe("vms"), "switch": probe("b-peers")}})
        return (BrokerProcess("a", ca, pa, tmp_path / "a.log"),
                BrokerProcess("b", cb, pb, tmp_path / "b.log"))

    procs: list[BrokerProcess] = []

    def brokers(pause_borrow: int = 0, pause_reclaim: int = 0, **settings: Any):
        """Write both configs (playbook pauses and config settings as given); the processes
        start when told."""
        a, b = make(pause_borrow, pause_reclaim, **settings)
        procs.extend([a, b])
        return a, b

    yield brokers, files
    for p in procs:
        p.stop()
    _end_orphan_playbooks(tmp_path)
    stop_standins(slurm)
    reset(slurm)
    reset(slurm_b)


def _end_orphan_playbooks(tmp_path: Path) -> None:
    """A broker killed with SIGKILL leaves the playbook it was running (ansible-runner starts
    it in a session of its own; systemd's KillMode=control-group ends it in production). End
    the ones this test's brokers started - found by this test's own directory on their
    command line - by process group."""
    mine = str(tmp_path)
    own = {os.getpid(), os.getpgrp()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            pgid = os.getpgid(int(entry.name))
            if mine in cmdline and pgid not in own:
                os.killpg(pgid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _wait_for(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def _demand(cluster, jobs: int = 4) -> None:
    for _ in range(jobs):
        cluster.run("sbatch", "-o", "/dev/null", "-N1", "--wrap", "sleep 300")


def _no_orphans(slurm, slurm_b, files, a_contracts):
    """Nothing runs that no open contract accounts for."""
    open_nodes = {n for c in a_contracts if not c.state.final for n in c.node_names}
    borrowed = {line.split("|")[0] for line in slurm.run("sinfo", "-N", "-h", "-o", "%N|%f").split()
                if "borrowed" in line}
    assert borrowed <= open_nodes
    assert set((files / "vms").read_text().split()) <= open_nodes
    pids = {p.name[len("slurmd-"):-len(".pid")] for p in slurm.dir.glob("slurmd-a-*.pid")}
    assert pids <= open_nodes
    if not open_nodes:
        assert (files / "peers").read_text().split() == []
        assert "viocluster-lent" not in slurm_b.run("sinfo", "-N", "-h", "-o", "%E")


def test_killed_while_provisioning__rolled_back_on_restart__fake_vm_and_switch(pair, slurm, slurm_b):
    brokers, files = pair
    a, b = brokers(pause_borrow=60)
    b.start()
    _demand(slurm)
    a.start()
    c = a.wait_state(S.PROVISIONING)
    # the stand-in VM is up and the playbook still runs when the broker dies
    slurm.wait("stand-in node registered", lambda: slurm.node_state(c.node_names[0]) != "")
    a.kill9()
    assert [x.state for x in a.contracts() if x.id == c.id] == [S.PROVISIONING]  # not lost
    slurm.run("scancel", "-u", "root")  # no more demand: the restarted broker must not borrow
    a2, _ = brokers()  # the same config, without the pause
    a2.start()
    a2.wait_contract(c.id, S.FAILED)
    b.wait_contract(c.id, S.CLOSED)  # the lender heard the borrower gave up, and unlent
    assert "rolled back" in [x for x in a2.contracts() if x.id == c.id][0].reason
    _no_orphans(slurm, slurm_b, files, a2.contracts())


def test_killed_while_active_and_an_orphan_vm_and_peer_appear__fake_vm_and_switch(pair, slurm, slurm_b):
    brokers, files = pair
    a, b = brokers()
    b.start()
    _demand(slurm)
    a.start()
    c = a.wait_state(S.ACTIVE)
    b.wait_contract(c.id, S.ACTIVE)
    node = c.node_names[0]
    a.kill9()
    # while A is dead: a VM on B's host and a switch peer of A's appear that no contract
    # accounts for; B removes its orphan while running (reconciliation every interval), A
    # its own when it starts again
    with open(files / "vms", "a") as f:
        f.write("a-vorphan-0\n")
    with open(files / "peers", "a") as f:
        f.write("vbk-gone-host\n")
    _wait_for("B removes the orphan VM", lambda: "a-vorphan-0" not in (files / "vms").read_text())
    a.start()
    _wait_for("A removes the orphan peer", lambda: (files / "peers").read_text().split() == ["n1"])
    assert (files / "vms").read_text().split() == [node]
    got = [x for x in a.contracts() if x.id == c.id][0]
    assert got.state is S.ACTIVE and slurm.node_state(node) in ("idle", "allocated", "mixed")
    _no_orphans(slurm, slurm_b, files, a.contracts())


def test_lender_killed_while_reclaiming_finishes_on_restart__fake_vm_and_switch(pair, slurm, slurm_b):
    brokers, files = pair
    a, b = brokers(pause_reclaim=60)
    b.start()
    _demand(slurm)
    a.start()
    c = a.wait_state(S.ACTIVE)
    b.wait_contract(c.id, S.ACTIVE)
    _demand(slurm_b, 2)  # B needs its node back: it reclaims, its playbook hangs, B dies
    b.wait_contract(c.id, S.RECLAIMING)
    a.wait_contract(c.id, S.CLOSED)  # the borrower already requeued and removed the node
    b.kill9()
    assert [x.state for x in b.contracts() if x.id == c.id] == [S.RECLAIMING]
    slurm_b.run("scancel", "-u", "root")
    _, b2 = brokers()
    b2.start()
    b2.wait_contract(c.id, S.CLOSED)
    _no_orphans(slurm, slurm_b, files, a.contracts())


def test_killed_in_proposed_and_in_reclaiming_while_the_peer_is_frozen__fake_vm_and_switch(
    pair, slurm, slurm_b
):
    """SIGSTOP on the lender holds the borrower in a state while it waits for an answer."""
    brokers, files = pair
    a, b = brokers()
    b.start()
    b.signal(signal.SIGSTOP)
    _demand(slurm)
    a.start()
    proposed = a.wait_state(S.PROPOSED)
    a.kill9()
    b.signal(signal.SIGCONT)
    slurm.run("scancel", "-u", "root")
    a.start()
    # the proposal is dropped (not kept as a closed contract) and counted against B
    _wait_for("A drops the proposal", lambda: proposed.id not in {x.id for x in a.contracts()})
    assert any(r.peer == "b" for r in a.refusals())
    deadline = time.monotonic() + 60
    while any(not x.state.final for x in b.contracts()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(x.state.final for x in b.contracts())

    # now a real trade, then A gives the node back while B is frozen: A waits in reclaiming
    _demand(slurm)
    active = a.wait_state(S.ACTIVE)
    b.wait_contract(active.id, S.ACTIVE)
    b.signal(signal.SIGSTOP)
    slurm.run("scancel", "-u", "root")  # no demand: A returns the idle borrowed node
    a.wait_contract(active.id, S.RECLAIMING)
    a.kill9()
    b.signal(signal.SIGCONT)
    a.start()
    a.wait_contract(active.id, S.CLOSED)
    b.wait_contract(active.id, S.CLOSED)
    _no_orphans(slurm, slurm_b, files, a.contracts())
    assert {x.role for x in b.contracts()} == {Role.LENDER}


# ---------------------------------------------------------------------- faults, while running
# Reconciliation runs every interval: each broker notices a dead, cut-off or vanished part
# and ends the contract on both sides without a restart. The scheduler side is real: A's
# Slurm itself finds the stand-in VM's slurmd not responding.


def _job_on(cluster, node: str) -> str:
    job = cluster.run("sbatch", "--parsable", "-o", "/dev/null", "-p", "loan", "-C", "borrowed",
                      "--wrap", "sleep 300").strip()
    cluster.wait("job on the borrowed node",
                 lambda: cluster.run("squeue", "-h", "-j", job, "-o", "%T %N").split() == ["RUNNING", node],
                 60)
    return job


def _pids_of_vm(cluster, node: str, job: str) -> list[int]:
    """The stand-in VM: its slurmd (pid file) and the processes of the job running on it."""
    pids = [int((cluster.dir / f"slurmd-{node}.pid").read_text())]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline.startswith(f"slurmstepd: [{job}.".encode()) or f"SLURM_JOB_ID={job}".encode() in environ:
            pids.append(int(entry.name))
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def test_lender_host_dies__borrower_ends_the_contract_after_the_grace__fake_vm(pair, slurm, slurm_b):
    """The lending host 'dies': the stand-in VM (its slurmd and its job) is frozen. A's Slurm
    marks the node not responding; after node_down_grace_s A requeues the job, deletes the
    node and tells B, which stops the VM and resumes its host. Nobody restarts."""
    brokers, files = pair
    a, b = brokers(node_down_grace_s=2, peer_lost_timeout_s=600)
    b.start()
    _demand(slurm)
    a.start()
    c = a.wait_state(S.ACTIVE)
    b.wait_contract(c.id, S.ACTIVE)
    node = c.node_names[0]
    job = _job_on(slurm, node)
    frozen = _pids_of_vm(slurm, node, job)
    _signal_all(frozen, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        slurm.wait("the node not responding", lambda: slurm.node_state(node).endswith("*"), 90)
        seen = time.monotonic() - t0
        got = a.wait_contract(c.id, S.CLOSED, 60)
        ended = time.monotonic() - t0
        assert "down or not responding" in a.store_history(c.id), a.store_history(c.id)
        lent = b.wait_contract(c.id, S.CLOSED, 60)
        assert "returned by a" in b.store_history(c.id)
        assert slurm.node_state(node) == ""  # deleted from A's Slurm
        assert slurm.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING")
        assert "Restarts=1" in slurm.run("scontrol", "show", "job", job)
        assert "viocluster-lent" not in slurm_b.run("sinfo", "-N", "-h", "-o", "%E")
        assert node not in (files / "vms").read_text().split()
        print(f"\nHOST DEATH: not responding after {seen:.1f} s; borrower closed after "
              f"{ended:.1f} s ({got.reason}); lender: {lent.reason}")
    finally:
        _signal_all(frozen, signal.SIGKILL)
    _no_orphans(slurm, slurm_b, files, a.contracts())


def test_borrower_unreachable__lender_takes_its_host_back__borrower_learns_later__fake_vm(
    pair, slurm, slurm_b
):
    """A's broker is frozen (SIGSTOP: it answers nothing, as behind a partition). After
    peer_lost_timeout_s B stops the VM and resumes its host; when A runs again it learns the
    contract is closed (from B's answer to its heartbeat, or the reclaim B sent) and takes
    the node out of its Slurm."""
    brokers, files = pair
    a, b = brokers(node_down_grace_s=600, peer_lost_timeout_s=5)
    b.start()
    _demand(slurm)
    a.start()
    c = a.wait_state(S.ACTIVE)
    b.wait_contract(c.id, S.ACTIVE)
    node = c.node_names[0]
    a.signal(signal.SIGSTOP)
    try:
        lent = b.wait_contract(c.id, S.CLOSED, 60)
        assert "not heard from" in b.store_history(c.id), b.store_history(c.id)
        assert "viocluster-lent" not in slurm_b.run("sinfo", "-N", "-h", "-o", "%E")
        assert node not in (files / "vms").read_text().split()
        assert not (slurm.dir / f"slurmd-{node}.pid").exists()  # the VM was stopped
        assert [x.state for x in a.contracts() if x.id == c.id] == [S.ACTIVE]  # A saw nothing
    finally:
        a.signal(signal.SIGCONT)
    got = a.wait_contract(c.id, S.CLOSED, 60)
    _wait_for("the node out of A's Slurm", lambda: slurm.node_state(node) == "", 60)
    print(f"\nPEER LOST: lender {lent.reason}; borrower {got.reason}")
    _no_orphans(slurm, slurm_b, files, a.contracts())


def test_lent_vm_gone__lender_ends_the_contract_and_tells_the_borrower__fake_vm(pair, slurm, slurm_b):
    """The VM dies on the lending host (B's VM probe no longer lists it): after the grace B
    ends the contract and tells A, which takes the node out of its Slurm at once."""
    brokers, files = pair
    a, b = brokers(node_down_grace_s=2)
    b.start()
    _demand(slurm)
    a.start()
    c = a.wait_state(S.ACTIVE)
    b.wait_contract(c.id, S.ACTIVE)
    node = c.node_names[0]
    pid = int((slurm.dir / f"slurmd-{node}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    subprocess.run(["sed", "-i", f"/^{node}$/d", str(files / "vms")], check=True)
    lent = b.wait_contract(c.id, S.CLOSED, 60)
    assert "gone from the lending host" in b.store_history(c.id)
    got = a.wait_contract(c.id, S.CLOSED, 30)
    assert "reclaimed by b" in got.reason
    assert slurm.node_state(node) == ""
    assert "viocluster-lent" not in slurm_b.run("sinfo", "-N", "-h", "-o", "%E")
    print(f"\nVM GONE: lender {lent.reason}; borrower {got.reason}")
    _no_orphans(slurm, slurm_b, files, a.contracts())
