"""PBS Professional / OpenPBS adapter - UNTESTED against a live server.

Written from the PBS Professional reference (``qstat -f -F json``, ``pbsnodes -a -F json``,
``qmgr``, ``qrerun``) behind the same interface as the Slurm adapter. No PBS server is packaged
for Debian 12, so only the parsers are tested (on sample output shaped like the reference's);
treat the commands as a starting point and check them on a real server before relying on them.

Mapping:

* demand: jobs in state Q (queued) and R (running), ``Resource_List.nodect`` nodes each;
* borrowed nodes carry the custom boolean resource ``resources_available.<feature>=True``
  (create it once with ``qmgr -c "create resource borrowed type=boolean,flag=h"``);
* a borrowed VM is created with ``qmgr -c "create node NAME"`` and marked borrowed; its MoM
  then reports in;
* remove: ``pbsnodes -o`` (offline), ``qrerun`` each job on it, then ``qmgr -c "delete node"``;
* lend: ``pbsnodes -o -C viocluster-lent:<contract>``; unlend: ``pbsnodes -r``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from broker.scheduler.base import (
    Job,
    Node,
    RemoveResult,
    SchedulerAdapter,
    SchedulerError,
    Snapshot,
)
from broker.scheduler.command import CommandAdapter

_JOB_STATES = {"Q": "pending", "H": "held", "W": "waiting", "R": "running", "E": "exiting"}


def _json(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(f"{what} printed no JSON ({exc.msg})") from None
    return data if isinstance(data, dict) else {}


def parse_qstat_json(text: str) -> tuple[Job, ...]:
    jobs = []
    for job_id, raw in _json(text, "qstat -f -F json").get("Jobs", {}).items():
        resources = raw.get("Resource_List", {})
        exec_host = raw.get("exec_host", "")
        hosts = tuple(sorted({part.split("/")[0] for part in exec_host.split("+") if part}))
        jobs.append(
            Job(
                id=job_id,
                state=_JOB_STATES.get(raw.get("job_state", ""), raw.get("job_state", "").lower()),
                nodes=int(resources.get("nodect", 1)),
                node_list=hosts,
            )
        )
    return tuple(jobs)


def _node_state(text: str) -> str:
    states = [s.strip() for s in text.split(",")]
    if "down" in states or "state-unknown" in states:
        return "down"
    if "offline" in states:
        return "drained"
    if "job-busy" in states or "job-exclusive" in states:
        return "allocated"
    if "free" in states:
        return "idle"
    return states[0] if states else "unknown"


def parse_pbsnodes_json(text: str, feature: str) -> tuple[Node, ...]:
    nodes = []
    for name, raw in _json(text, "pbsnodes -a -F json").get("nodes", {}).items():
        avail = raw.get("resources_available", {})
        mem = str(avail.get("mem", "0kb")).lower()
        mem_mb = int(mem.rstrip("kmgb") or 0)
        mem_mb = mem_mb // 1024 if mem.endswith("kb") else mem_mb * 1024 if mem.endswith("gb") else mem_mb
        flag = avail.get(feature)
        nodes.append(
            Node(
                name=name,
                state=_node_state(raw.get("state", "")),
                features=(feature,) if flag in (True, "True", "true") else (),
                cpus=int(avail.get("ncpus", 0)),
                memory_mb=mem_mb,
                reason=str(raw.get("comment", "")),
            )
        )
    return tuple(nodes)


class PbsAdapter(CommandAdapter):
    """A PBS Professional / OpenPBS domain. UNTESTED against a live server (see above)."""

    default_poll_s = 0.5

    def snapshot(self) -> Snapshot:
        jobs = parse_qstat_json(self.run("qstat", "-f", "-F", "json"))
        nodes = parse_pbsnodes_json(self.run("pbsnodes", "-a", "-F", "json"), self.borrowed_feature)
        return Snapshot(jobs, nodes, self.borrowed_feature, self.lent_reason)

    def _node(self, name: str) -> Node | None:
        return self.snapshot().node(name)

    def admit(self, node: str, timeout: float = 30.0) -> Node:
        if self._node(node) is None:
            self.run("qmgr", "-c", f"create node {node}")
        self.run("qmgr", "-c", f"set node {node} resources_available.{self.borrowed_feature}=True")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self._node(node)
            if seen is not None and seen.joined:
                return seen
            time.sleep(self.poll_s)
        raise SchedulerError(f"PBS node {node} did not join within {timeout:g} s")

    def remove(self, node: str, reason: str, timeout: float = 30.0) -> RemoveResult:
        snap = self.snapshot()
        if snap.node(node) is None:
            return RemoveResult(node, existed=False)
        self.run("pbsnodes", "-o", "-C", reason, node)
        running = tuple(j.id for j in snap.jobs if j.state == "running" and node in j.node_list)
        for job in running:
            self.run("qrerun", job)
        self.run("qmgr", "-c", f"delete node {node}")
        return RemoveResult(node, requeued=running)

    def lend(self, node: str, contract_id: str) -> None:
        self.run("pbsnodes", "-o", "-C", f"{self.lent_reason}:{contract_id}", node)

    def unlend(self, node: str) -> None:
        self.run("pbsnodes", "-r", node)
