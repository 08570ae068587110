"""OpenPBS / PBS Professional adapter, tested against a live OpenPBS 23.06.

Mapping (what the tests in tests/pbs/ check on a real server, scheduler and MoMs):

* Demand from ``qstat -f -F json``: jobs queued (Q) wait, jobs running (R, or E while they end)
  run; each wants ``Resource_List.nodect`` nodes. Finished (F, with job history), moved (M)
  and expired (X) jobs are not demand.
* Nodes from ``pbsnodes -a -F json``. A borrowed node carries the host-level boolean resource
  ``resources_available.<feature> = True`` (the pbs role creates the resource, ``borrowed``
  by default). A lent node is ``offline`` with the comment ``viocluster-lent:<contract>``.
  A node whose MoM the server does not hear is ``down`` (or ``state-unknown`` before its
  first contact): it is not responding.
* After a node is created or deleted the server sends every MoM the cluster's new address
  list and shows each as ``down`` (no comment) until it answers, a second or two. A MoM the
  server lost is ``down`` with the comment ``node down: <why>``. :meth:`PbsAdapter.snapshot`
  reads the nodes again while any is in the first case (up to ``settle_s``), so that a
  domain's own nodes never look lost for a moment after a trade.
* Jobs never span physical and borrowed nodes: the pbs role makes the borrowed resource the
  server's placement-set key (``node_group_key``, ``node_group_enable``) and tells the
  scheduler never to span sets (``do_not_span_psets``). Nodes without the resource (the
  domain's own) form one set, borrowed ones the other, and a job runs inside one of them.
* Admit: ``qmgr -c "create node NAME resources_available.<feature>=True"`` in one command, so
  that the scheduler never sees the new node unmarked (for a moment it would be a physical
  node), then wait until its MoM answers (free, or already given a job), and start a
  scheduling cycle (a node coming up does not always start one).
* Remove: the node goes offline (no new job; ``qmgr -c "set node ... state=offline"``), each
  job on it is requeued (``qrerun``), and once no job is left on it the node is deleted
  (``qmgr -c "delete node"``). Only then may the VM be stopped.
* A borrowed node's name need not resolve on the server's host: its MoM may be reached by
  address (``Mom=<address>``, as ``borrow.yml`` creates it). ``pbsnodes NAME`` and
  ``pbsnodes -o NAME`` look the name up first and refuse such a node, so the adapter reads the
  whole node list and takes nodes offline with ``qmgr``.
* Lend: ``pbsnodes -o -C viocluster-lent:<contract>``; unlend: ``pbsnodes -r``, the comment
  is unset and a scheduling cycle started (a node back in service starts none by itself).
* Hold (a borrowed node its lender drains): offline with the comment
  ``viocluster-draining:<contract>`` through ``qmgr``; its job runs on (the node reads
  ``draining`` while it does). Unhold: ``state -= offline``, the comment unset, a cycle
  started. (Not yet run against the live server of tests/pbs.)
"""

from __future__ import annotations

import json
import time
from typing import Any

from broker.scheduler.base import (
    Job,
    Node,
    RemoveResult,
    SchedulerError,
    Snapshot,
)
from broker.scheduler.command import CommandAdapter

_JOB_STATES = {
    "Q": "pending", "R": "running", "E": "running", "H": "held", "W": "waiting",
    "T": "transit", "S": "suspended", "U": "suspended", "B": "running",
}
#: Jobs that left the queue (listed only with job history or as array subjobs).
_GONE = frozenset({"F", "M", "X"})


def _json(text: str, what: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(f"{what} printed no JSON ({exc.msg})") from None
    return data if isinstance(data, dict) else {}


def _hosts(exec_host: str) -> tuple[str, ...]:
    """``head/0*1+node1/0*1`` -> ``('head', 'node1')``."""
    return tuple(sorted({part.split("/")[0] for part in exec_host.split("+") if part}))


def parse_qstat_json(text: str) -> tuple[Job, ...]:
    """Jobs still queued or running, from ``qstat -f -F json``."""
    jobs = []
    for job_id, raw in _json(text, "qstat -f -F json").get("Jobs", {}).items():
        code = str(raw.get("job_state", ""))
        if code in _GONE:
            continue
        resources = raw.get("Resource_List", {})
        try:
            nodes = max(int(resources.get("nodect", 1)), 0)
        except (TypeError, ValueError):
            nodes = 1
        jobs.append(Job(
            id=job_id,
            state=_JOB_STATES.get(code, code.lower()),
            nodes=nodes,
            node_list=_hosts(str(raw.get("exec_host", ""))),
        ))
    return tuple(jobs)


def _node_state(text: str, has_jobs: bool) -> tuple[str, bool]:
    """The adapter's state word and whether the MoM answers, from PBS's state list
    (``free``, ``job-busy``, ``offline,job-busy``, ``down``, ``state-unknown,down``...)."""
    states = {s.strip() for s in text.split(",") if s.strip()}
    responding = not states & {"down", "state-unknown", "unresolvable"}
    if not responding:
        return "down", False
    if "offline" in states:  # no new job; one still running makes it draining
        busy = has_jobs or bool(states & {"job-busy", "job-exclusive", "busy"})
        return ("draining" if busy else "drained"), True
    if states & {"job-busy", "job-exclusive", "resv-exclusive", "busy"}:
        return "allocated", True
    if "free" in states:
        return ("mixed" if has_jobs else "idle"), True
    return (sorted(states)[0] if states else "unknown"), True


def settling(raw: dict[str, Any]) -> bool:
    """The server is re-sending the cluster's addresses to this node's MoM: ``down`` with no
    comment of the server's (a lost MoM's says ``node down: ...``; a new node is
    ``state-unknown,down``)."""
    states = {s.strip() for s in str(raw.get("state", "")).split(",")}
    return states == {"down"} and not str(raw.get("comment", "")).startswith("node down")


def _mem_mb(value: Any) -> int:
    text = str(value or "0").strip().lower()
    units = {"kb": 1 / 1024, "mb": 1, "gb": 1024, "tb": 1024 * 1024, "b": 1 / (1024 * 1024)}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            try:
                return int(float(text[: -len(suffix)]) * factor)
            except ValueError:
                return 0
    try:
        return int(int(text) / (1024 * 1024))  # plain bytes
    except ValueError:
        return 0


def parse_pbsnodes_json(text: str, feature: str) -> tuple[Node, ...]:
    """Nodes from ``pbsnodes -a -F json``; ``feature`` is the boolean resource marking
    borrowed nodes."""
    nodes = []
    for name, raw in _json(text, "pbsnodes -a -F json").get("nodes", {}).items():
        if not isinstance(raw, dict) or "state" not in raw:
            continue  # asked for by name and absent: {"NAME": {"NAME": "Unknown node "}}
        avail = raw.get("resources_available", {})
        flag = avail.get(feature)
        state, responding = _node_state(str(raw.get("state", "")), bool(raw.get("jobs")))
        try:
            cpus = int(avail.get("ncpus", 0))
        except (TypeError, ValueError):
            cpus = 0
        nodes.append(Node(
            name=name,
            state=state,
            responding=responding,
            features=(feature,) if flag in (True, "True", "true") else (),
            cpus=cpus,
            memory_mb=_mem_mb(avail.get("mem")),
            reason=str(raw.get("comment", "")),
        ))
    return tuple(nodes)


class PbsAdapter(CommandAdapter):
    """An OpenPBS (or PBS Professional) domain, driven through its command-line tools."""

    default_poll_s = 0.3
    #: How long a snapshot waits for nodes the server is re-sending the cluster's addresses to.
    settle_s = 5.0

    def jobs(self) -> tuple[Job, ...]:
        return parse_qstat_json(self.run("qstat", "-f", "-F", "json"))

    def nodes(self) -> tuple[Node, ...]:
        deadline = time.monotonic() + self.settle_s
        while True:
            text = self.run("pbsnodes", "-a", "-F", "json")
            raw = _json(text, "pbsnodes -a -F json").get("nodes", {})
            if time.monotonic() > deadline or not any(
                    isinstance(v, dict) and settling(v) for v in raw.values()):
                return parse_pbsnodes_json(text, self.borrowed_feature)
            time.sleep(self.poll_s)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.jobs(), self.nodes(), self.borrowed_feature, self.lent_reason)

    def _node(self, name: str) -> Node | None:
        # The whole list, not ``pbsnodes NAME``: that looks the name up on this host first, and
        # a borrowed VM's name need not resolve here (its node reaches the MoM by address).
        out = self.run("pbsnodes", "-a", "-F", "json", check=False)
        try:
            found = parse_pbsnodes_json(out, self.borrowed_feature)
        except SchedulerError:
            return None  # "Server has no node list" is not JSON
        return next((n for n in found if n.name == name), None)

    def _jobs_on(self, name: str) -> tuple[str, ...]:
        return tuple(j.id for j in self.jobs()
                     if j.state == "running" and name in j.node_list)

    # ------------------------------------------------------------------ changing

    def admit(self, node: str, timeout: float = 30.0) -> Node:
        mark = f"resources_available.{self.borrowed_feature}=True"
        if self._node(node) is None:
            self.run("qmgr", "-c", f"create node {node} {mark}")
        else:
            self.run("qmgr", "-c", f"set node {node} {mark}")
        deadline = time.monotonic() + timeout
        seen: Node | None = None
        while time.monotonic() < deadline:
            seen = self._node(node)
            if seen is not None and seen.joined:
                self._kick()  # jobs waiting for it start now, not at the next cycle
                return seen
            time.sleep(self.poll_s)
        where = f"it is {seen.state}" if seen else "the server lost it"
        raise SchedulerError(
            f"PBS node {node} did not join within {timeout:g} s ({where}); check the VM's "
            "console and its MoM's log"
        )

    def remove(self, node: str, reason: str, timeout: float = 30.0) -> RemoveResult:
        if self._node(node) is None:
            return RemoveResult(node, existed=False)
        # qmgr, not ``pbsnodes -o``, which refuses a node whose name does not resolve here
        comment = reason.replace('"', "'")
        self.run("qmgr", "-c", f'set node {node} state=offline,comment="{comment}"')
        running = self._jobs_on(node)
        for job in running:
            self.run("qrerun", job, check=False)  # a job that just ended is no error
        self._wait_then_delete(node, timeout, "qrerun", ("qmgr", "-c", f"delete node {node}"))
        return RemoveResult(node, requeued=running)

    def lend(self, node: str, contract_id: str) -> None:
        self.run("pbsnodes", "-o", "-C", f"{self.lent_reason}:{contract_id}", node)

    def unlend(self, node: str) -> None:
        current = self._node(node)
        if current is None or not current.reason.startswith(self.lent_reason):
            return
        self.run("pbsnodes", "-r", node)
        self.run("qmgr", "-c", f"unset node {node} comment")
        self._kick()

    def hold(self, node: str, contract_id: str) -> None:
        # qmgr, as in remove(): a borrowed node's name need not resolve here
        self.run("qmgr", "-c", f'set node {node} state=offline,'
                 f'comment="{self.draining_reason}:{contract_id}"')

    def unhold(self, node: str) -> None:
        current = self._node(node)
        if current is None or not current.reason.startswith(self.draining_reason):
            return
        self.run("qmgr", "-c", f"set node {node} state -= offline")
        self.run("qmgr", "-c", f"unset node {node} comment")
        self._kick()

    def _kick(self) -> None:
        """Start a scheduling cycle now: a node back in service or new starts none for sure
        (the next would come with a job's arrival or end, or after scheduler_iteration, 10
        minutes by default). Setting ``scheduling`` to True starts one; it is set only where it is
        True already, so that an administrator's pause stays."""
        listed = self.run("qmgr", "-c", "list server scheduling", check=False)
        if "scheduling = True" in listed:
            self.run("qmgr", "-c", "set server scheduling = True")
