"""The PBS adapter against a live OpenPBS 23.06 (server, scheduler, comm, datastore, MoMs) on
nspawn hosts installed by the pbs role: the same cases as the Slurm adapter's tests."""

from __future__ import annotations

import time

import pytest

from broker.scheduler.base import SchedulerError
from broker.scheduler.command import CommandRunner
from broker.scheduler.pbs import PbsAdapter

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Whole nodes, as the Slurm tests' one-CPU nodes: a MoM here reports every CPU of the machine.
ONE = ("-l", "select=1:ncpus=1", "-l", "place=excl")
TWO = ("-l", "select=2:ncpus=1", "-l", "place=scatter:excl")
BORROWED = ("-l", "select=1:ncpus=1:borrowed=True", "-l", "place=excl")


@pytest.fixture
def adapter(pbs) -> PbsAdapter:
    return PbsAdapter(CommandRunner(tuple(pbs.prefix()), pbs.env, timeout=30))


def _state(pbs, job: str) -> str:
    return pbs.job(job).get("job_state", "")


def _hosts(pbs, job: str) -> list[str]:
    exec_host = pbs.job(job).get("exec_host", "")
    return sorted(part.split("/")[0] for part in exec_host.split("+") if part)


def _considered(pbs, job: str) -> bool:
    """The scheduler has looked at the job and said why it does not run."""
    pbs.kick()
    return bool(pbs.job(job).get("comment"))


def _wait_free(pbs, *names: str) -> None:
    pbs.wait(f"nodes {names} free", lambda: all(
        pbs.nodes().get(n, {}).get("state") == "free" for n in names))


def test_demand_and_nodes_from_qstat_and_pbsnodes(pbs, adapter, clean_queue):
    _wait_free(pbs, "head", "node1")
    jobs = [pbs.submit(*ONE, "--", "/bin/sleep", "300") for _ in range(3)]
    jobs.append(pbs.submit(*TWO, "--", "/bin/sleep", "300"))
    pbs.wait("two jobs running", lambda: [_state(pbs, j) for j in jobs].count("R") == 2)
    snap = adapter.snapshot()
    assert {j.id for j in snap.jobs} == set(jobs)
    assert snap.running_nodes == 2
    assert snap.waiting_nodes == 1 + 2
    state = snap.domain_state()
    assert (state.physical, state.lent, state.borrowed, state.busy_physical) == (2, 0, 0, 2)
    assert state.demand == 5 and state.need == 3
    running = [j for j in snap.jobs if j.state == "running"]
    assert sorted(n for j in running for n in j.node_list) == ["head", "node1"]


def test_lend_takes_a_node_out_of_service_and_unlend_puts_it_back(pbs, adapter, clean_queue):
    _wait_free(pbs, "head", "node1")
    adapter.lend("node1", "b-c42")
    snap = adapter.snapshot()
    assert [n.name for n in snap.lent] == ["node1"]
    assert snap.node("node1").reason == "viocluster-lent:b-c42"
    assert snap.domain_state().lent == 1 and snap.domain_state().physical == 2
    # a job for two nodes cannot start while node1 is lent; one for one node runs on the head
    two = pbs.submit(*TWO, "--", "/bin/true")
    one = pbs.submit(*ONE, "--", "/bin/sleep", "300")
    pbs.wait("the one-node job running", lambda: _state(pbs, one) == "R")
    assert _hosts(pbs, one) == ["head"]
    pbs.wait("the scheduler's word on the two-node job", lambda: _considered(pbs, two))
    assert _state(pbs, two) == "Q"
    pbs.run("qdel", "-W", "force", one)
    adapter.unlend("node1")
    snap = adapter.snapshot()
    assert snap.lent == () and snap.node("node1").reason == ""
    # unlend starts a scheduling cycle: the job runs without another job's arrival
    pbs.wait("the two-node job to run", lambda: _state(pbs, two) in ("", "R", "E"))


def test_admit_run_and_remove_a_borrowed_node__a_mom_on_a_third_host_stands_in_for_the_vm(
    pbs, adapter, clean_queue
):
    node = adapter.admit("vm1", timeout=60)
    assert node.joined and "borrowed" in node.features
    snap = adapter.snapshot()
    assert [n.name for n in snap.borrowed] == ["vm1"]
    assert snap.domain_state().borrowed == 1 and snap.domain_state().physical == 2

    job = pbs.submit(*BORROWED, "--", "/bin/sleep", "300")
    pbs.wait("the job running on the borrowed node",
             lambda: _state(pbs, job) == "R" and _hosts(pbs, job) == ["vm1"])

    result = adapter.remove("vm1", reason="pbst-reclaim", timeout=60)
    assert result.existed and result.requeued == (job,)
    assert adapter.snapshot().node("vm1") is None
    # the job went back to the queue (requeued: it ran once), not lost
    assert _state(pbs, job) == "Q"
    assert int(pbs.job(job).get("run_count", 0)) == 1


def test_admit_takes_a_node_pbs_gave_a_waiting_job_before_anyone_saw_it_free(
    pbs, adapter, clean_queue
):
    """A job waits for a borrowed node; the scheduler may start it the moment the node is
    there, so admission may never see the node free. (Here the node is created as admission
    creates it, the job given it, and only then is admission asked: it must take the node.)"""
    job = pbs.submit(*BORROWED, "--", "/bin/sleep", "300")
    pbs.wait("the scheduler's word on the waiting job", lambda: _considered(pbs, job))
    pbs.run("qmgr", "-c", "create node vm1 resources_available.borrowed=True")
    pbs.wait("the waiting job running on the new node",
             lambda: _considered(pbs, job) and _state(pbs, job) == "R" and _hosts(pbs, job) == ["vm1"])
    node = adapter.admit("vm1", timeout=10)
    assert node.busy and node.joined and "borrowed" in node.features
    assert adapter.remove("vm1", reason="pbst-test", timeout=60).requeued == (job,)


def test_no_job_spans_physical_and_borrowed_nodes(pbs, adapter, clean_queue):
    """Placement sets keyed on the borrowed resource, never spanned (the pbs role's
    node_group_key and do_not_span_psets): with node1 busy, a two-node job waits although
    the head and the borrowed vm1 are free; once node1 is free it runs on head and node1."""
    adapter.admit("vm1", timeout=60)
    _wait_free(pbs, "head", "node1", "vm1")
    busy = pbs.submit("-l", "select=1:ncpus=1:host=node1", "-l", "place=excl", "--",
                      "/bin/sleep", "300")
    pbs.wait("node1 busy", lambda: _state(pbs, busy) == "R")
    two = pbs.submit(*TWO, "--", "/bin/sleep", "300")
    pbs.wait("the scheduler's word on the two-node job", lambda: _considered(pbs, two))
    assert _state(pbs, two) == "Q"
    assert pbs.nodes()["vm1"]["state"] == "free" and pbs.nodes()["head"]["state"] == "free"
    pbs.run("qdel", "-W", "force", busy)
    pbs.wait("the two-node job running", lambda: _state(pbs, two) == "R")
    assert _hosts(pbs, two) == ["head", "node1"]
    pbs.run("qdel", "-W", "force", two)
    adapter.remove("vm1", reason="pbst-test", timeout=60)


def test_removing_an_absent_node_is_no_error(adapter, clean_queue):
    assert adapter.remove("pbst-never-there", reason="x").existed is False


def test_admit_times_out_with_a_clear_error_and_remove_takes_the_node_out(pbs, adapter, clean_queue):
    with pytest.raises(SchedulerError, match="did not join"):
        adapter.admit("ghost", timeout=3)
    # what the broker does after a failed admission
    assert adapter.remove("ghost", reason="pbst-test").existed
    assert adapter.snapshot().node("ghost") is None


def test_hold_keeps_new_jobs_off_a_borrowed_node_while_its_job_runs_and_unhold_lets_them_on(
    pbs, adapter, clean_queue
):
    """What a borrower does while its lender drains a loan: the node takes no new job, the job
    on it runs on (never requeued); once the lender no longer drains, jobs go there again.
    (The job on it is ended with qdel: a job that ends by itself there would wait to copy its
    output back to the head, which this test domain does not set up.)"""
    adapter.admit("vm1", timeout=60)
    first = pbs.submit(*BORROWED, "--", "/bin/sleep", "300")
    pbs.wait("the first job running on the borrowed node",
             lambda: _state(pbs, first) == "R" and _hosts(pbs, first) == ["vm1"])
    adapter.hold("vm1", "b-c1")
    node = adapter.snapshot().node("vm1")
    assert node is not None and node.reason.startswith(adapter.draining_reason), node
    second = pbs.submit(*BORROWED, "--", "/bin/sleep", "300")
    pbs.wait("the scheduler's word on the second job", lambda: _considered(pbs, second))
    job = pbs.job(first)  # the job there runs on, started once
    assert (job.get("job_state"), int(job.get("run_count", 0))) == ("R", 1), job
    pbs.run("qdel", "-W", "force", first)
    pbs.wait("the first job gone and the held node otherwise free", lambda: _state(pbs, first) == ""
             and "job-exclusive" not in pbs.nodes()["vm1"]["state"])
    for _ in range(3):  # scheduling cycles with the held node free: nothing new starts there
        pbs.kick()
        time.sleep(1)
        assert _state(pbs, second) == "Q", pbs.job(second)
    adapter.hold("vm1", "b-c1")  # holding again changes nothing
    adapter.unhold("vm1")
    assert not adapter.snapshot().node("vm1").reason
    pbs.wait("the second job running on the borrowed node",
             lambda: _state(pbs, second) == "R" and _hosts(pbs, second) == ["vm1"])
    adapter.unhold("vm1")  # a node not held is left alone
    assert adapter.remove("vm1", reason="pbst-test", timeout=60).requeued == (second,)
