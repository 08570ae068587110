"""The Slurm adapter against a real slurmctld + slurmd (+ munged) in a network namespace."""

from __future__ import annotations

import time

import pytest

from broker.scheduler.command import CommandRunner
from broker.scheduler.slurm import SlurmAdapter, parse_sinfo

pytestmark = pytest.mark.root


@pytest.fixture
def adapter(slurm) -> SlurmAdapter:
    return SlurmAdapter(CommandRunner(tuple(slurm.prefix), slurm.env, timeout=30))


def _submit(slurm, *args: str) -> str:
    return slurm.run("sbatch", "--parsable", "-o", "/dev/null", *args).strip().split(";")[0]


def test_demand_and_nodes_from_squeue_json_and_sinfo(slurm, adapter, clean_queue):
    jobs = [_submit(slurm, "-N1", "--wrap", "sleep 60") for _ in range(3)]
    jobs.append(_submit(slurm, "-N2", "--wrap", "sleep 60"))
    slurm.wait("two jobs running", lambda: slurm.run("squeue", "-h", "-t", "R").count("\n") == 2)
    snap = adapter.snapshot()
    assert {j.id for j in snap.jobs} == set(jobs)
    assert snap.running_nodes == 2
    assert snap.waiting_nodes == 1 + 2
    state = snap.domain_state()
    assert (state.physical, state.lent, state.borrowed, state.busy_physical) == (2, 0, 0, 2)
    assert state.demand == 5 and state.need == 3


def test_lend_drains_a_physical_node_and_unlend_resumes_it(slurm, adapter, clean_queue):
    adapter.lend("n2", "b-c42")
    snap = adapter.snapshot()
    assert [n.name for n in snap.lent] == ["n2"]
    assert snap.node("n2").reason == "viocluster-lent:b-c42"
    assert snap.domain_state().lent == 1 and snap.domain_state().physical == 2
    # a job for two nodes cannot start while n2 is lent
    job = _submit(slurm, "-N2", "--wrap", "true")
    time.sleep(1.5)
    assert slurm.job_state(job) == "PENDING"
    adapter.unlend("n2")
    assert adapter.snapshot().lent == ()
    slurm.wait("the two-node job to finish", lambda: slurm.job_state(job) in ("", "COMPLETED"))


def test_admit_run_and_remove_a_dynamic_node__a_second_slurmd_stands_in_for_the_vm(
    slurm, adapter, clean_queue
):
    """A second ``slurmd -Z`` (dynamic node, Feature=borrowed) plays the borrowed VM."""
    slurm.start_dynamic_node("vbkvm1")
    try:
        node = adapter.admit("vbkvm1", timeout=30)
        assert node.idle and "borrowed" in node.features
        snap = adapter.snapshot()
        assert [n.name for n in snap.borrowed] == ["vbkvm1"]
        assert snap.domain_state().borrowed == 1 and snap.domain_state().physical == 2

        job = _submit(slurm, "-p", "loan", "-C", "borrowed", "--wrap", "sleep 300")
        slurm.wait("job running on the borrowed node",
                   lambda: slurm.run("squeue", "-h", "-j", job, "-o", "%T %N").split() == ["RUNNING", "vbkvm1"])

        result = adapter.remove("vbkvm1", reason="vbk-test-reclaim", timeout=30)
        assert result.existed and result.requeued == (job,)
        assert adapter.snapshot().node("vbkvm1") is None
        # the job went back to the queue (requeued, restart counted), not lost
        assert slurm.job_state(job) in ("PENDING", "CONFIGURING")
        assert "Restarts=1" in slurm.run("scontrol", "show", "job", job)
    finally:
        slurm.stop("slurmd-vbkvm1")  # only now may the "VM" go


def test_admit_adds_the_borrowed_feature_when_the_node_came_without_it(slurm, adapter, clean_queue):
    slurm.start_dynamic_node("vbkvm2", features="plain")
    try:
        node = adapter.admit("vbkvm2", timeout=30)
        assert "borrowed" in node.features
        assert adapter.remove("vbkvm2", reason="vbk-test").requeued == ()
    finally:
        slurm.stop("slurmd-vbkvm2")


def test_admit_takes_a_node_slurm_gave_a_waiting_job_before_anyone_saw_it_idle(slurm, adapter, clean_queue):
    """A burst waits for the borrowed node: Slurm starts a job on it the moment it registers,
    so the node may never be seen idle. Admission must take it (it once timed out and rolled
    the trade back, requeueing the job)."""
    slurm.start_dynamic_node("vbkvm3")
    try:
        # (Slurm refuses a constraint no node has: the job comes once the node registered, and
        # admission looks only after the job runs, as when it lost that race)
        slurm.wait("the new node registered",
                   lambda: "vbkvm3" in slurm.run("sinfo", "-h", "-N", "-o", "%N").split())
        job = _submit(slurm, "-p", "loan", "-C", "borrowed", "--wrap", "sleep 300")
        slurm.wait("the waiting job running on the new node",
                   lambda: slurm.run("squeue", "-h", "-j", job, "-o", "%T %N").split() == ["RUNNING", "vbkvm3"])
        node = adapter.admit("vbkvm3", timeout=10)
        assert node.busy and node.joined and "borrowed" in node.features
        assert adapter.remove("vbkvm3", reason="vbk-test").requeued == (job,)
    finally:
        slurm.stop("slurmd-vbkvm3")


def test_removing_an_absent_node_is_no_error(adapter, clean_queue):
    assert adapter.remove("vbk-never-there", reason="x").existed is False


def test_admit_times_out_with_a_clear_error(adapter):
    from broker.scheduler.base import SchedulerError

    with pytest.raises(SchedulerError, match="never registered"):
        adapter.admit("vbk-ghost", timeout=0.5)


def test_sinfo_parser_lists_a_node_in_two_partitions_once():
    text = "n1|idle|(null)|1|500|400|none\nn1|idle|(null)|1|500|400|none\nv1|mixed+drain|borrowed|1|200|N/A|lent\n"
    nodes = parse_sinfo(text)
    assert [(n.name, n.state, n.features, n.free_memory_mb) for n in nodes] == [
        ("n1", "idle", (), 400), ("v1", "mixed", ("borrowed",), None)
    ]
