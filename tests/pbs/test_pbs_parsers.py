"""The PBS adapter's parsers on output recorded from a live OpenPBS 23.06 (tests/pbs/data/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.scheduler.base import SchedulerError, Snapshot
from broker.scheduler.pbs import parse_pbsnodes_json, parse_qstat_json, settling

DATA = Path(__file__).resolve().parent / "data"


def _read(name: str) -> str:
    return (DATA / name).read_text()


def test_queued_and_running_jobs_with_their_node_counts_and_hosts():
    jobs = {j.id: j for j in parse_qstat_json(_read("qstat-two-running-two-queued.json"))}
    assert {k: (j.state, j.nodes, j.node_list) for k, j in jobs.items()} == {
        "0.head": ("running", 1, ("head",)),
        "1.head": ("running", 1, ("node1",)),
        "2.head": ("pending", 1, ()),
        "3.head": ("pending", 2, ()),
    }


def test_a_job_over_two_nodes_lists_both():
    (job,) = parse_qstat_json(_read("qstat-two-node-job.json"))
    assert (job.state, job.nodes, job.node_list) == ("running", 2, ("head", "node1"))


def test_an_empty_queue_has_no_jobs_key():
    assert parse_qstat_json(_read("qstat-empty.json")) == ()


def test_busy_nodes_are_allocated_physical_nodes():
    nodes = parse_pbsnodes_json(_read("pbsnodes-both-busy.json"), "borrowed")
    assert [(n.name, n.state, n.features, n.cpus, n.responding) for n in nodes] == [
        ("head", "allocated", (), 2, True), ("node1", "allocated", (), 2, True)
    ]
    assert nodes[0].memory_mb == 24684084 // 1024


def test_a_lent_node_is_offline_with_the_lent_comment():
    nodes = parse_pbsnodes_json(_read("pbsnodes-node1-lent.json"), "borrowed")
    snap = Snapshot((), nodes, "borrowed", "viocluster-lent")
    assert [n.name for n in snap.lent] == ["node1"]
    assert snap.node("node1").state == "drained"
    assert snap.domain_state().physical == 2


def test_a_borrowed_node_carries_the_resource_and_a_new_node_is_not_responding():
    """Right after ``create node vm1``: the server shows the other MoMs down (it re-sends the
    cluster's addresses) and the new one state-unknown,down."""
    text = _read("pbsnodes-after-create-node.json")
    nodes = {n.name: n for n in parse_pbsnodes_json(text, "borrowed")}
    assert nodes["vm1"].features == ("borrowed",)
    assert nodes["head"].features == ()
    raw = json.loads(text)["nodes"]
    assert settling(raw["head"]) and settling(raw["node1"]) and not settling(raw["vm1"])


def test_a_lost_mom_is_down_not_responding_and_not_settling():
    text = _read("pbsnodes-mom-lost.json")
    node = {n.name: n for n in parse_pbsnodes_json(text, "borrowed")}["node1"]
    assert node.declared_dead and node.reason == "node down: communication closed"
    assert not settling(json.loads(text)["nodes"]["node1"])


def test_a_job_on_a_borrowed_node():
    (job,) = parse_qstat_json(_read("qstat-on-borrowed.json"))
    assert (job.state, job.node_list) == ("running", ("vm1",))


def test_a_node_asked_for_by_name_that_does_not_exist_is_left_out():
    text = '{"nodes": {"nosuch": {"nosuch": "Unknown node "}}}'
    assert parse_pbsnodes_json(text, "borrowed") == ()


def test_output_that_is_not_json_is_one_clear_error():
    with pytest.raises(SchedulerError, match="printed no JSON"):
        parse_qstat_json("qstat: cannot connect to server head (errno=15010)")
