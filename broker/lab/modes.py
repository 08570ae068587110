"""Reclamation modes on the lab: the lender's terms set live, a trade, and each mode's promise.

Domain B (the lender) is given the terms under test in its broker's policy and its broker is
restarted; domain A borrows one of B's hosts for a burst of jobs (as in the fault drills,
:class:`broker.lab.drill.Drill`), and then:

- ``drain``: B wants its host back while A's job runs on the VM. Nothing is preempted: A's
  scheduler keeps every new job off the VM, the job on it finishes there, and only then is the
  VM stopped and the host back in B's service.
- ``lease``: B wants its host back at once, but the lease holds it: the contract stays active
  until ``lease_s`` after it began, then ends ("lease ended"); the job on the VM is requeued
  and finishes on A's own nodes.
- ``gradual``: B lends both its hosts in one contract and then wants both back; one comes
  back an interval: the contract first shrinks to one host (the VM of the other stopped, its
  job requeued), and ends at a later interval.

Each run ends with the drill's checks (every job finished exactly once, never twice at once,
nothing left over) and B's broker back on the terms it had.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import yaml

from broker.lab import hosts as labhosts
from broker.lab.demo import BROKER_CLI, BROKER_CONFIG, _contracts, _wait
from broker.lab.drill import HEADS, Drill, DrillResult, Trade
from broker.lab.faultcheck import parse_output
from broker.negotiation.trade import DRAINED, LEASE_ENDED


@dataclass
class ModeResult:
    mode: str
    trade: Trade
    problems: list[str] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=dict)


def set_terms(drill: Drill, domain: str, reclamation: dict, lending: dict | None = None) -> str:
    """Give ``domain``'s broker these reclamation terms (its policy's ``reclamation``, and
    ``lending`` settings over its own) and restart it; the config it had is returned, for
    :func:`restore`."""
    head = HEADS[domain]
    before = drill.shell.run(head, f"cat {BROKER_CONFIG}")
    raw = yaml.safe_load(before)
    policy = raw.setdefault("policy", {})
    policy["reclamation"] = reclamation
    if lending:
        policy["lending"] = {**(policy.get("lending") or {}), **lending}
    _write_and_restart(drill, head, yaml.safe_dump(raw, sort_keys=False))
    return before


def restore(drill: Drill, domain: str, text: str) -> None:
    _write_and_restart(drill, HEADS[domain], text)


def _write_and_restart(drill: Drill, head: str, text: str) -> None:
    data = base64.b64encode(text.encode()).decode()
    # written in place (cat >): the file keeps its owner and mode (the broker's account reads it)
    drill.shell.run(head, f"echo {data} | base64 -d > {BROKER_CONFIG} "
                          "&& systemctl restart viocluster-broker")

    def answers() -> bool:
        out = drill._ask(head, f"{BROKER_CLI} status --config {BROKER_CONFIG} --json", 10)
        try:
            return out is not None and bool(json.loads(out).get("domain"))
        except ValueError:
            return False

    _wait(f"the broker on {head} to answer after its restart", answers, 60.0, 0.5)


def _transition(contract: dict, reason: str) -> float | None:
    """When the lender's contract went to ``reclaiming`` for ``reason`` (None: it did not)."""
    for t in contract.get("transitions", []):
        if t.get("to") == "reclaiming" and str(t.get("reason", "")).startswith(reason):
            return float(t["at"])
    return None


def _lender_contract(drill: Drill, trade: Trade) -> dict | None:
    for c in _contracts(drill.shell, HEADS["b"]):
        if c["id"] == trade.contract:
            return c
    return None


@contextlib.contextmanager
def _on_terms(plan: labhosts.Plan, log: Callable[[str], None], jobs: int, job_seconds: int,
              timeout_s: float, reclamation: dict, lending: dict | None = None) -> Iterator[Drill]:
    """A drill with B's broker on these terms; B's own terms are back afterwards."""
    drill = Drill(plan, log=log, jobs=jobs, job_seconds=job_seconds, timeout_s=timeout_s)
    try:
        before = set_terms(drill, "b", reclamation, lending)
        try:
            yield drill
        finally:
            restore(drill, "b", before)
    finally:
        drill.close()


def _until_ended(drill: Drill, trade: Trade, what: str, timeout_s: float,
                 every: float = 0.5, also: Callable[[], None] | None = None) -> dict:
    """Poll until B's contract of ``trade`` is closed (or failed); it is returned."""
    def ended() -> bool:
        if also is not None:
            also()
        c = _lender_contract(drill, trade)
        return c is not None and c["state"] in ("closed", "failed")

    _wait(what, ended, timeout_s, every)
    return _lender_contract(drill, trade) or {}


def run_drain(plan: labhosts.Plan, log: Callable[[str], None] = print,
              job_seconds: int = 25, timeout_s: float = 240.0) -> ModeResult:
    """B drains its lent host while A's job runs on the VM: no preemption, no new job there."""
    with _on_terms(plan, log, 6, job_seconds, timeout_s, {"mode": "drain"}) as drill:
        trade = drill.start_trade()
        result = ModeResult("drain", trade)
        status = f"{BROKER_CLI} status --config {BROKER_CONFIG} --json"

        def b_knows_busy() -> bool:  # else B would take an idle-looking loan back at once
            out = drill._ask(HEADS["b"], status, 10)
            try:
                busy = json.loads(out).get("loans_busy", []) if out is not None else []
                return any(str(loan).startswith(f"{trade.contract}/") for loan in busy)
            except ValueError:
                return False

        _wait(f"B to hear from A that job {trade.job} runs on its loan", b_knows_busy, 30.0, 0.5)
        drill.burst_on_b()
        burst_at = time.time()
        held_at: list[float] = []
        sinfo = f"sinfo -h -n {trade.node} -o %T"

        def held() -> None:
            state = drill._ask(HEADS["a"], sinfo)
            if not held_at and state is not None and state.strip().lower().startswith("drain"):
                held_at.append(time.time())
                log(f"{trade.node} is held in A's Slurm (takes no new job) "
                    f"{held_at[0] - burst_at:.1f} s after B's burst")

        drained = _until_ended(drill, trade, f"B to take {trade.host} back once A's job "
                               f"{trade.job} ends", timeout_s + 2 * job_seconds, also=held)
        ended_at = _transition(drained, DRAINED)
        outcome = DrillResult("drain", trade, burst_at, {})
        drill.finish(outcome, settle=True)
        result.problems.extend(outcome.problems)
        if drained.get("state") != "closed" or ended_at is None:
            result.problems.append(f"B's contract {trade.contract} did not end as drained: "
                                   f"{drained.get('state')}, {drained.get('reason')!r}")
        if not held_at:
            result.problems.append(f"{trade.node} was never held in A's Slurm while B drained it")
        job = parse_output(trade.job, drill.read_output(trade.job) or b"")
        if [r.host for r in job.runs] != [trade.node] or job.finished_on != trade.node:
            result.problems.append(f"job {trade.job} was preempted: it ran on "
                                   f"{[r.host for r in job.runs]}, finished on {job.finished_on}")
        for other in drill.ids:
            out = parse_output(other, drill.read_output(other) or b"")
            if len(out.runs) > 1:
                result.problems.append(f"job {other} was requeued: ran on {[r.host for r in out.runs]}")
            late = [r for r in out.runs if r.host == trade.node and held_at and r.first > held_at[0]]
            if late:
                result.problems.append(f"job {other} started on {trade.node} after it was held "
                                       f"({late[0].first - held_at[0]:.1f} s after)")
        on_vm = [r for r in job.runs if r.host == trade.node]
        if ended_at is not None and on_vm and ended_at < on_vm[-1].last:
            result.problems.append(f"B took {trade.host} back {on_vm[-1].last - ended_at:.1f} s "
                                   f"before job {trade.job} ended on it")
        result.figures = {
            "held_after_burst_s": held_at[0] - burst_at if held_at else None,
            "job_end_to_reclaim_s": (ended_at - on_vm[-1].last) if ended_at and on_vm else None,
        }
        return result


def run_lease(plan: labhosts.Plan, lease_s: float = 20.0, log: Callable[[str], None] = print,
              job_seconds: int = 30, timeout_s: float = 240.0) -> ModeResult:
    """B wants its host back at once; the lease holds it until ``lease_s`` after it began."""
    with _on_terms(plan, log, 3, job_seconds, timeout_s,
                   {"mode": "lease", "lease_s": lease_s}) as drill:
        trade = drill.start_trade()
        result = ModeResult("lease", trade)
        drill.burst_on_b()  # B's own demand: under lease it must still wait
        burst_at = time.time()

        lent = _until_ended(drill, trade, f"the lease of {trade.host} to end", timeout_s + lease_s,
                            every=1.0)
        active_at = next((float(t["at"]) for t in lent.get("transitions", [])
                          if t.get("to") == "active"), None)
        ended_at = _transition(lent, LEASE_ENDED)
        outcome = DrillResult("lease", trade, burst_at, {})
        drill.finish(outcome, settle=True)
        result.problems.extend(outcome.problems)
        if ended_at is None or active_at is None:
            result.problems.append(f"B's contract {trade.contract} did not end with its lease: "
                                   f"{[(t.get('to'), t.get('reason')) for t in lent.get('transitions', [])]}")
        elif ended_at < active_at + lease_s:
            result.problems.append(f"B took {trade.host} back {active_at + lease_s - ended_at:.1f} s "
                                   "before the lease ended")
        job = parse_output(trade.job, drill.read_output(trade.job) or b"")
        if trade.node not in [r.host for r in job.runs] or job.finished_on == trade.node:
            result.problems.append(f"job {trade.job} should have been requeued off {trade.node} "
                                   f"at the lease's end: ran on {[r.host for r in job.runs]}")
        result.figures = {
            "lease_s": lease_s,
            "active_to_reclaim_s": (ended_at - active_at) if ended_at and active_at else None,
            "burst_to_reclaim_s": (ended_at - burst_at) if ended_at else None,
        }
        return result


def run_gradual(plan: labhosts.Plan, log: Callable[[str], None] = print,
                job_seconds: int = 25, timeout_s: float = 240.0) -> ModeResult:
    """B lends both hosts in one contract, then takes them back one an interval."""
    # five jobs on A's two nodes: A needs three more and may borrow two, both of B's hosts
    with _on_terms(plan, log, 5, job_seconds, timeout_s, {"mode": "gradual", "per_interval": 1},
                   lending={"fraction_idle": 1.0}) as drill:
        trade = drill.start_trade()
        result = ModeResult("gradual", trade)
        lent = _lender_contract(drill, trade) or {}
        if len(lent.get("hosts") or []) < 2:
            result.problems.append(f"B lent {lent.get('hosts')} in contract {trade.contract}; "
                                   "the gradual check needs both its hosts in one contract")
        drill.burst_on_b()  # B wants both back
        burst_at = time.time()

        lent = _until_ended(drill, trade, f"B to take back both hosts of {trade.contract}",
                            timeout_s)
        steps = lent.get("transitions", [])
        shrunk = [t for t in steps if t.get("from") == "active" and t.get("to") == "active"]
        ending = next((float(t["at"]) for t in steps if t.get("to") == "reclaiming"), None)
        outcome = DrillResult("gradual", trade, burst_at, {})
        drill.finish(outcome, settle=True)
        result.problems.extend(outcome.problems)
        if len(shrunk) != 1 or ending is None or float(shrunk[0]["at"]) >= ending:
            result.problems.append("B's contract did not shrink by one host and then end: "
                                   f"{[(t.get('from'), t.get('to'), t.get('reason')) for t in steps]}")
        else:
            log(f"contract {trade.contract}: {shrunk[0]['reason']}; "
                f"{ending - float(shrunk[0]['at']):.1f} s later the last host")
        result.figures = {
            "burst_to_first_host_s": float(shrunk[0]["at"]) - burst_at if shrunk else None,
            "first_to_last_host_s": ending - float(shrunk[0]["at"]) if shrunk and ending else None,
        }
        return result
