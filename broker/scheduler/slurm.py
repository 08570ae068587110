"""Slurm 22.05 adapter.

* Demand from ``squeue --json`` (data_parser v0.0.38, built into 22.05).
* Nodes from ``sinfo -N``: physical nodes, those lent (drained with the reason
  ``viocluster-lent:<contract>``) and those borrowed (feature ``borrowed``), each with its
  state and whether the controller still hears its slurmd: ``idle*``, ``down*`` (the ``*``
  flag, ``NOT_RESPONDING`` in ``scontrol``) is a node the controller has not heard from
  since its last ping; it turns ``down`` after SlurmdTimeout. (``scontrol show node --json``
  printed no JSON on the Debian Slurm 22.05 the tests run, so the text outputs are read.)
* A borrowed VM joins by itself, as a dynamic node (``slurmd -Z --conf "... Feature=borrowed"``);
  :meth:`SlurmAdapter.admit` waits for it and makes sure it carries the feature.
* :meth:`SlurmAdapter.remove` marks the node down (batch jobs on it are requeued at once), waits
  until no job runs there, then deletes the node. Only then may the VM be stopped: a node
  daemon killed first leaves its jobs' processes behind and the node idle until
  SlurmdTimeout.
"""

from __future__ import annotations

import json
import re
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

SINFO_FORMAT = "%N|%T|%f|%c|%m|%e|%E"
_STATE_FLAGS = "*~#!%$@^-+"


def _state(text: str) -> str:
    """The base state, lower case, without flags: ``IDLE*+DYNAMIC_NORM`` -> ``idle``."""
    return text.strip().lower().split("+")[0].rstrip(_STATE_FLAGS)


def _responding(text: str) -> bool:
    """False for a node the controller does not hear (``idle*``, ``DOWN+NOT_RESPONDING``)."""
    parts = text.strip().upper().split("+")
    return "*" not in parts[0] and "NOT_RESPONDING" not in parts[1:]


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def parse_sinfo(text: str) -> tuple[Node, ...]:
    """Nodes from ``sinfo -N -h -o SINFO_FORMAT`` (a node in two partitions is listed once)."""
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 7:
            raise SchedulerError(f"sinfo: unexpected line {line!r}")
        name, state, features, cpus, memory, free, reason = parts
        if name in nodes:
            continue
        feats = () if features in ("(null)", "") else tuple(features.split(","))
        nodes[name] = Node(
            name=name,
            state=_state(state),
            responding=_responding(state),
            features=feats,
            cpus=_int(cpus) or 0,
            memory_mb=_int(memory) or 0,
            free_memory_mb=_int(free),
            reason="" if reason == "none" else reason,
        )
    return tuple(nodes.values())


_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z]+)=")


def parse_scontrol_node(text: str, name: str) -> Node | None:
    """The node ``name`` from ``scontrol show node -o`` output, or None if it does not exist."""
    for line in text.splitlines():
        if not line.startswith(f"NodeName={name} "):
            continue
        keys = list(_SCONTROL_KEY.finditer(line))
        fields: dict[str, str] = {}
        for i, match in enumerate(keys):
            end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
            fields[match.group(1)] = line[match.end():end].strip()
        features = fields.get("AvailableFeatures", "(null)")
        reason = fields.get("Reason", "")
        return Node(
            name=name,
            state=_state(fields.get("State", "unknown")),
            responding=_responding(fields.get("State", "unknown")),
            features=() if features in ("(null)", "") else tuple(features.split(",")),
            cpus=_int(fields.get("CPUTot", "0")) or 0,
            memory_mb=_int(fields.get("RealMemory", "0")) or 0,
            free_memory_mb=_int(fields.get("FreeMem", "N/A")),
            reason=reason.split(" [", 1)[0] if reason else "",
        )
    return None


def _count(value: Any) -> int:
    """A node count as 22.05 prints it (an int) or as later versions do ({set, number})."""
    if isinstance(value, dict):
        value = value.get("number", 0)
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


# Jobs that left the queue; ``squeue --json`` still lists them for MinJobAge (300 s by
# default), unlike plain ``squeue``, which shows only jobs that are queued or running.
FINISHED_STATES = frozenset({
    "boot_fail", "cancelled", "completed", "deadline", "failed", "node_fail",
    "out_of_memory", "preempted", "revoked", "timeout",
})


def parse_squeue_json(text: str) -> tuple[Job, ...]:
    """The jobs still queued or running, from ``squeue --json``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(f"squeue --json printed no JSON ({exc.msg})") from None
    jobs = []
    for raw in data.get("jobs", []):
        state = raw.get("job_state", "")
        if isinstance(state, list):  # later Slurm versions: a list of flags
            state = state[0] if state else ""
        if str(state).lower() in FINISHED_STATES:
            continue
        nodes_text = raw.get("nodes") or ""
        jobs.append(
            Job(
                id=str(raw.get("job_id")),
                state=str(state).lower(),
                nodes=_count(raw.get("node_count", 0)),
                node_list=tuple(n for n in str(nodes_text).split(",") if n),
            )
        )
    return tuple(jobs)


class SlurmAdapter(CommandAdapter):
    """A Slurm domain, driven through its command-line tools."""

    default_poll_s = 0.1

    def jobs(self) -> tuple[Job, ...]:
        return parse_squeue_json(self.run("squeue", "--json"))

    def nodes(self) -> tuple[Node, ...]:
        return parse_sinfo(self.run("sinfo", "-N", "-h", "-o", SINFO_FORMAT))

    def snapshot(self) -> Snapshot:
        return Snapshot(self.jobs(), self.nodes(), self.borrowed_feature, self.lent_reason)

    def _node(self, name: str) -> Node | None:
        """One node from ``scontrol show node`` (sinfo hides nodes in no partition)."""
        out = self.run("scontrol", "show", "node", "-o", name, check=False)
        return parse_scontrol_node(out, name)

    def _jobs_on(self, name: str) -> tuple[str, ...]:
        out = self.run("squeue", "-h", "-t", "RUNNING,COMPLETING", "-w", name, "-o", "%i", check=False)
        return tuple(out.split())

    # ------------------------------------------------------------------ changing

    def admit(self, node: str, timeout: float = 30.0) -> Node:
        deadline = time.monotonic() + timeout
        seen: Node | None = None
        while time.monotonic() < deadline:
            seen = self._node(node)
            if seen is not None and seen.joined:
                if self.borrowed_feature not in seen.features:
                    features = ",".join((*seen.features, self.borrowed_feature))
                    self.run(
                        "scontrol", "update", f"nodename={node}",
                        f"AvailableFeatures={features}", f"ActiveFeatures={features}",
                    )
                    seen = self._node(node) or seen
                return seen
            time.sleep(self.poll_s)
        where = f"it is {seen.state}" if seen else "it never registered"
        raise SchedulerError(
            f"node {node} did not join within {timeout:g} s ({where}); check the VM's "
            "console and its slurmd log"
        )

    def remove(self, node: str, reason: str, timeout: float = 30.0) -> RemoveResult:
        if self._node(node) is None:
            return RemoveResult(node, existed=False)
        running = self._jobs_on(node)
        self.run("scontrol", "update", f"nodename={node}", "state=down", f"reason={reason}")
        self._wait_then_delete(node, timeout, "state=down", ("scontrol", "delete", f"nodename={node}"))
        return RemoveResult(node, requeued=running)

    def lend(self, node: str, contract_id: str) -> None:
        self.run(
            "scontrol", "update", f"nodename={node}", "state=drain",
            f"reason={self.lent_reason}:{contract_id}",
        )

    def unlend(self, node: str) -> None:
        current = self._node(node)
        if current is None or not current.reason.startswith(self.lent_reason):
            return
        self.run("scontrol", "update", f"nodename={node}", "state=resume")

    def hold(self, node: str, contract_id: str) -> None:
        # drain: the job running there goes on (``draining``), no new one starts
        self.run("scontrol", "update", f"nodename={node}", "state=drain",
                 f"reason={self.draining_reason}:{contract_id}")

    def unhold(self, node: str) -> None:
        current = self._node(node)
        if current is None or not current.reason.startswith(self.draining_reason):
            return
        self.run("scontrol", "update", f"nodename={node}", "state=resume")
