"""Parsing ``squeue --json`` (Slurm 22.05's data_parser v0.0.38) into the adapter's jobs."""

from __future__ import annotations

import json

import pytest

from broker.scheduler.base import SchedulerError
from broker.scheduler.slurm import parse_squeue_json


def _job(job_id: int, state: str, nodes: int, node_list: str = "") -> dict:
    return {"job_id": job_id, "job_state": state, "node_count": nodes, "nodes": node_list}


def test_finished_jobs_are_not_in_the_queue() -> None:
    """squeue --json keeps finished jobs for MinJobAge; they must not count as demand."""
    text = json.dumps({"jobs": [
        _job(1, "COMPLETED", 2, "n1,n2"),
        _job(2, "CANCELLED", 1),
        _job(3, "RUNNING", 2, "n1,n2"),
        _job(4, "PENDING", 3),
        _job(5, "TIMEOUT", 1, "n1"),
        _job(6, "COMPLETING", 1, "n2"),
    ]})
    jobs = parse_squeue_json(text)
    assert [(j.id, j.state, j.nodes) for j in jobs] == [
        ("3", "running", 2), ("4", "pending", 3), ("6", "completing", 1)]
    assert jobs[0].node_list == ("n1", "n2")


def test_state_as_a_list_of_flags_and_node_count_as_a_number_object() -> None:
    text = json.dumps({"jobs": [
        {"job_id": 7, "job_state": ["PENDING"], "node_count": {"number": 4, "set": True}},
        {"job_id": 8, "job_state": ["CANCELLED"], "node_count": {"number": 1}},
    ]})
    assert [(j.id, j.state, j.nodes) for j in parse_squeue_json(text)] == [("7", "pending", 4)]


def test_output_that_is_not_json_is_a_scheduler_error() -> None:
    with pytest.raises(SchedulerError, match="printed no JSON"):
        parse_squeue_json("squeue: error: Invalid user")


def test_node_states_say_whether_the_controller_hears_the_node():
    from broker.scheduler.slurm import parse_scontrol_node, parse_sinfo

    nodes = {n.name: n for n in parse_sinfo(
        "a-v1-0|idle*|borrowed|1|200|N/A|none\n"
        "a-v2-0|down*|borrowed|1|200|N/A|Not responding\n"
        "a-v3-0|down|borrowed|1|200|N/A|viocluster-reclaim:x\n"
        "n1|idle|(null)|1|500|400|none\n")}
    assert (nodes["a-v1-0"].state, nodes["a-v1-0"].responding) == ("idle", False)
    assert nodes["a-v1-0"].idle and nodes["a-v1-0"].down_or_not_responding
    assert (nodes["a-v2-0"].state, nodes["a-v2-0"].responding) == ("down", False)
    assert nodes["a-v3-0"].responding and nodes["a-v3-0"].down_or_not_responding
    assert nodes["n1"].responding and not nodes["n1"].down_or_not_responding
    node = parse_scontrol_node("NodeName=a-v1-0 Arch=x86_64 CPUTot=1 AvailableFeatures=borrowed "
                               "State=IDLE+DYNAMIC_NORM+NOT_RESPONDING RealMemory=200", "a-v1-0")
    assert node is not None and (node.state, node.responding) == ("idle", False)
