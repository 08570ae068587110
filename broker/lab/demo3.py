"""Three lab domains trade: one borrower takes hosts from two lenders, and one lender reclaims.

On a lab whose inventory has the three domains (``inventories/lab-pbs``: a and b on Slurm, c on
OpenPBS, each trusting the other two) and whose hosts site.yml has configured, brokers
included: a burst on the borrower (a) that needs more than its own two nodes and one borrowed
host, so its broker (``max_borrowed: 2``) takes one host from each lender (b and c; each lends
at most one, ``fraction_idle: 0.5`` of two idle nodes). A job of a runs on a VM of each lender.
Then a burst on the reclaiming lender (c by default): it takes its host back, a's job on that
VM is requeued and finishes on a's own nodes or on the other lender's VM, whose contract stays
active meanwhile. Then everything finishes and nothing is left: every contract closed, no
borrowed node in any scheduler, no VM process on any lending host.

It reuses the two-domain demo's parts (:mod:`broker.lab.demo`): the SSH shell, the watcher,
the borrower's queue, the clean start, the schedulers' commands and the report of the
reclaimed trade (:func:`broker.lab.timeline.build_report`).
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from broker.lab import hosts as labhosts
from broker.lab import topology
from broker.lab.demo import (JOB_SCRIPT, TARGETS, DemoError, Queue, Shell, Watcher, _contracts,
                             _log_step, _wait, reset, scheduler_of, watch_vm_gone)
from broker.lab.timeline import build_report, format_summary, format_timeline, parse_job_output


@dataclass(frozen=True)
class ThreeDomainSettings:
    inventory: Path
    out: Path
    borrower: str = "a"
    lenders: tuple[str, str] = ("b", "c")
    reclaimer: str = "c"  # the lender that takes its host back (one of ``lenders``)
    jobs_borrower: int = 12
    jobs_reclaimer: int = 3
    job_seconds: int = 15
    phase_timeout_s: float = 180.0
    max_borrowed: int = 2  # the lab's borrowing policy (inventories/lab/group_vars/all.yml)


class _Finishes:
    """Per node, the borrower's jobs seen running there and the ones seen finishing there."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.lock = threading.Lock()
        self.before: dict[str, str] = {}
        self.ran_on: dict[str, set[str]] = {}
        self.done_on: dict[str, set[str]] = {}

    def poll(self) -> None:
        now = self.queue.snapshot()
        with self.lock:
            for job, node in now.items():
                if node and node != "done":
                    self.ran_on.setdefault(node, set()).add(job)
                was = self.before.get(job)
                if node == "done" and was not in (None, "", "done"):
                    self.done_on.setdefault(was, set()).add(job)
            self.before = now

    def ran(self, node: str) -> set[str]:
        with self.lock:
            return set(self.ran_on.get(node, ()))

    def done(self, node: str) -> set[str]:
        with self.lock:
            return set(self.done_on.get(node, ()))


def _transition_at(contract: dict, to: str) -> float | None:
    return next((t["at"] for t in contract.get("transitions", []) if t["to"] == to), None)


def three_domain_demo(settings: ThreeDomainSettings, log: Callable[[str], None] = print) -> dict:
    """The three-domain trade on a lab that is up and configured (site.yml run), told through
    ``log``; returns the outcome with ``problems`` (empty when every check holds) and
    ``figures``. Raises :class:`DemoError` when a step does not happen in time."""
    a, lenders, r = settings.borrower, tuple(settings.lenders), settings.reclaimer
    if r not in lenders or len(set(lenders)) != 2 or a in lenders:
        raise DemoError(f"the reclaiming lender {r} must be one of two lenders {lenders}, "
                        f"neither the borrower {a}")
    keep = next(x for x in lenders if x != r)
    plan = labhosts.Plan.load(topology.STATE_DIR)
    if plan is None:
        raise DemoError("the three-domain demo needs the lab up and configured: "
                        "`viocluster lab up -i inventories/lab-pbs` and site.yml")
    origin = time.time()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    heads = {d: f"{d}-head" for d in (a, *lenders)}
    names = {h.name for h in plan.hosts}
    missing = [h for h in heads.values() if h not in names]
    if missing:
        raise DemoError(f"the lab has no {', '.join(missing)}: bring up a lab whose inventory has "
                        f"domains {a}, {lenders[0]} and {lenders[1]}")
    own_nodes = {n for n in names if n.startswith(f"{a}-node")}
    lending_hosts = sorted(n for n in names for d in heads if n.startswith(f"{d}-node"))
    account = f"vcpeer{a}"  # the lending hosts' account of the borrower (playbooks/site.yml)
    shell = Shell(plan)
    watcher = Watcher()
    problems: list[str] = []
    figures: dict[str, float | None] = {}
    try:
        scheds = {d: scheduler_of(shell, head) for d, head in heads.items()}
        _log_step(log, origin, "domains: " + ", ".join(f"{d} ({s.kind})" for d, s in scheds.items())
                  + f"; {a} borrows from {lenders[0]} and {lenders[1]}, {r} reclaims")
        reset(shell, heads, settings.phase_timeout_s, scheds)
        run = time.strftime("%Y%m%d-%H%M%S")
        rundir = f"/home/viocluster-demo3/{run}"
        script = shlex.quote(JOB_SCRIPT.format(seconds=settings.job_seconds))
        for head in heads.values():
            shell.run(head, f"mkdir -p {rundir} && printf '%s' {script} > {rundir}/job.sh "
                            f"&& chmod 755 {rundir}/job.sh")

        queue = Queue(shell, heads[a], watcher, vm_prefix=f"{a}-v", sched=scheds[a])
        finishes = _Finishes(queue)
        burst_a = time.time()
        ids = shell.run(heads[a], scheds[a].submit(settings.jobs_borrower, rundir, f"demo3-{a}", a,
                                                   borrowed_ok=True)).split()
        queue.jobs.update(ids)
        _log_step(log, origin, f"burst on {a}: {len(ids)} jobs of {settings.job_seconds} s on "
                               f"{len(own_nodes)} nodes")
        watcher.every(0.25, queue.poll)
        watcher.every(0.25, finishes.poll)

        vms: dict[str, list[str]] = {}
        hosts_of: dict[str, list[str]] = {}

        def held() -> dict[str, dict]:
            """The borrower's active contract with each lender."""
            found = {}
            for c in _contracts(shell, heads[a], all_=False):
                if c["role"] == "borrower" and c["state"] == "active" and c.get("peer") in lenders:
                    found[c["peer"]] = c
            return found

        def on_each_lender() -> bool:
            now = held()
            for lender, c in now.items():
                vms[lender], hosts_of[lender] = list(c["nodes"]), list(c["hosts"])
            return all(lender in now and any(finishes.ran(n) for n in now[lender]["nodes"])
                       for lender in lenders)

        _wait(f"jobs of {a} running on a VM of {lenders[0]} and of {lenders[1]}", on_each_lender,
              settings.phase_timeout_s, 1.0)
        figures["burst_to_both_vms_busy_s"] = time.time() - burst_a
        _log_step(log, origin, f"{a} runs jobs on " + ", ".join(
            f"{vms[x][0]} ({x}'s {hosts_of[x][0]})" for x in lenders))
        vm, host = vms[r][0], hosts_of[r][0]

        def vm_done_and_next() -> bool:
            return bool(finishes.done(vm)) and vm in queue.snapshot().values()

        _wait(f"a job of {a} to finish on {vm} and the next to start there", vm_done_and_next,
              settings.phase_timeout_s)
        gone = watch_vm_gone(shell, watcher, host, account, vm)
        burst_r = time.time()
        ids_r = shell.run(heads[r], scheds[r].submit(settings.jobs_reclaimer, rundir, f"demo3-{r}",
                                                     r, borrowed_ok=False)).split()
        _log_step(log, origin, f"burst on {r}: {len(ids_r)} jobs; {r} needs its lent host back")
        _wait(f"the VM {vm} to be killed on {host}", gone.is_set, settings.phase_timeout_s, 0.1)
        try:
            _wait(f"{a}'s job on {vm} to be requeued",
                  lambda: vm in queue.snapshot_requeued().values(), 30.0, 0.2)
        except DemoError as exc:
            problems.append(str(exc))
        kept = held().get(keep)
        if kept is None or vms[keep][0] not in kept["nodes"]:
            problems.append(f"{a}'s contract with {keep} was not active when {r} had reclaimed "
                            f"its host ({vms[keep][0]} no longer held)")
        off = [j for j, n in queue.snapshot_requeued().items() if n == vm]
        _log_step(log, origin, f"{r} reclaimed {host}: {vm} gone, job(s) {', '.join(off)} "
                               f"requeued; the contract with {keep} is "
                               f"{'active' if kept else 'not active'}")
        _wait(f"every job of {a}'s burst to finish",
              lambda: len(queue.snapshot()) == len(ids)
              and all(n == "done" for n in queue.snapshot().values()),
              settings.phase_timeout_s * 2, 1.0)
        _wait(f"{r}'s jobs to finish", lambda: not shell.run(heads[r], scheds[r].queue_ids).strip(),
              settings.phase_timeout_s, 1.0)
        finished = time.time()
        _log_step(log, origin, "every job has finished; waiting for the contracts to end")

        def quiet() -> bool:
            for d, head in heads.items():
                if _contracts(shell, head, all_=False):
                    return False
                if shell.run(head, scheds[d].borrowed_nodes, check=False).strip():
                    return False
            return not any(shell.run(h, "pgrep -x linux || true", timeout=10).strip()
                           for h in lending_hosts)

        try:
            _wait("every contract to close, every borrowed node and VM to go", quiet,
                  settings.phase_timeout_s, 1.0)
            figures["last_job_to_quiet_s"] = time.time() - finished
        except DemoError as exc:
            problems.append(str(exc))
        watcher.close()

        jobs = [parse_job_output(job, shell.run(heads[a], f"cat {rundir}/{a}-{job}.out",
                                                check=False)) for job in ids]
        a_contracts = _contracts(shell, heads[a])
        lender_contracts = {x: _contracts(shell, heads[x]) for x in lenders}
        # the reclaimed trade, as the two-domain demo tells it; a job taken off the reclaimed VM
        # may finish on the borrower's own nodes or on the VM of the lender that keeps lending
        report = build_report(burst_a=burst_a, burst_b=burst_r, a_contracts=a_contracts,
                              b_contracts=lender_contracts[r], observations=watcher.events,
                              jobs=jobs, own_nodes=own_nodes | set(vms[keep]),
                              taken_off=queue.snapshot_requeued())
    finally:
        watcher.close()
        shell.close()

    problems.extend(report.problems)
    ran_on = {x: sorted(j.job_id for j in jobs if any(h in vms[x] for h, _ in j.starts + j.dones)
                        or any(n in vms[x] for n in j.taken_off))
              for x in lenders}
    done_on = {x: sorted(j.job_id for j in jobs if any(h in vms[x] for h, _ in j.dones))
               for x in lenders}
    for x in lenders:
        if not done_on[x]:
            problems.append(f"no job of {a} finished on {x}'s VM ({', '.join(vms[x])})")
    borrowed = [c for c in a_contracts if c["role"] == "borrower"
                and c.get("created_at", 0) >= burst_a - 1
                and _transition_at(c, "active") is not None]
    per_lender = {x: [c for c in borrowed if c.get("peer") == x] for x in lenders}
    for x in lenders:
        if any(len(c["nodes"]) > 1 for c in per_lender[x]):
            problems.append(f"{x} lent {a} more than one host in a contract")
        for c in per_lender[x]:
            if c["state"] != "closed":
                problems.append(f"{a}'s contract {c['id']} with {x} ended {c['state']}, not closed")
        agreed = [t for c in per_lender[x] for t in c["transitions"] if t["to"] == "agreed"]
        active = [t for c in per_lender[x] for t in c["transitions"] if t["to"] == "active"]
        if agreed and active:
            figures[f"agreed_to_idle_s_{x}"] = active[0]["at"] - agreed[0]["at"]
    # The loan from the other lender stays until the borrower returns it, idle, after the
    # reclaim: its contract leaves "active" (to "reclaiming", also the state of a return) only
    # after the reclaimed contract has closed, and never by the lender's reclaim.
    reclaimed_closed = min((t["at"] for c in per_lender[r] for t in c["transitions"]
                            if t["to"] == "closed" and t["reason"].startswith("reclaimed by")),
                           default=0.0)
    for c in per_lender[keep]:
        left = _transition_at(c, "reclaiming") or _transition_at(c, "closed")
        if left is not None and left < reclaimed_closed:
            problems.append(f"{a}'s contract {c['id']} with {keep} left active "
                            f"{reclaimed_closed - left:.2f} s before the one with {r} closed")
        by_lender = [t["reason"] for t in c["transitions"]
                     if "lender reclaims" in t["reason"] or "reclaimed by" in t["reason"]]
        if by_lender:
            problems.append(f"{keep} reclaimed its host too (contract {c['id']}: "
                            f"{by_lender[0]}): only {r} should")
    taken = queue.snapshot_requeued()
    requeued = {j.job_id: j.finished_on for j in report.requeued}
    if not requeued:
        problems.append(f"no job of {a} was requeued off {r}'s VM {vm}")
    if set(taken.values()) - {vm}:
        problems.append(f"jobs taken off other VMs than {vm}: {taken}")
    figures.update(report.figures)
    figures["total_s"] = time.time() - origin

    timeline = format_timeline(report, burst_a)
    summary = format_summary(report, TARGETS)
    log("")
    log(f"Timeline (seconds after the burst on {a}; A is {a}, B is {r}, the reclaiming lender):\n"
        f"{timeline}")
    log("")
    log(f"Summary of the reclaimed trade ({a} from {r}):\n{summary}")
    log(f"  VMs of {a}: " + "; ".join(f"from {x}: {', '.join(vms[x])} (jobs finished there: "
                                     f"{', '.join(done_on[x]) or '-'})" for x in lenders))
    result = {
        "run": run, "output_dir": f"{heads[a]}:{rundir}", "borrower": a, "lenders": list(lenders),
        "reclaimer": r, "schedulers": {d: s.kind for d, s in scheds.items()},
        "vms": vms, "lent_hosts": hosts_of, "jobs_ran_on": ran_on, "jobs_done_on": done_on,
        "jobs_on_borrowed": [j.job_id for j in report.jobs_on_borrowed],
        "requeued": requeued, "figures": figures, "targets": TARGETS, "problems": problems,
        "timeline": [{"at": e.at - burst_a, "who": e.who, "what": e.what} for e in report.events],
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    (out / "timeline.txt").write_text(timeline + "\n\n" + summary + "\n")
    return result
