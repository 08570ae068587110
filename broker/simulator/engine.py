"""Event-driven simulation of N domains, each with an EASY scheduler, trading nodes as VMs.

The broker of every domain runs each ``interval`` seconds and calls the same trade core as the
live broker (:mod:`broker.negotiation.trade`, over :mod:`broker.policy`): it builds a
:class:`~broker.policy.DomainState` from the simulated queue, the core returns effects (take a
loan back, drain it, give a VM back, ask for nodes), and the simulator plays the executor: VMs
boot (``boot_delay``), run jobs ``slowdown`` slower, and halt (``halt_delay``) before the node is
the lender's again.

Design for speed: one heap of timed events (job ends, VM up, VM down); submissions are read from
each domain's sorted lists; nodes are counts (physical) or a few VM records (borrowed); events
at one timestamp are handled together and then each changed domain schedules once. EASY keeps
the running jobs on physical nodes in a list sorted by estimated end, so the head job's shadow
time and extra nodes come from its first few entries; when only new jobs arrived and nothing was
freed, only the new jobs are tried (nothing else can have become startable).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from broker.negotiation import trade
from broker.policy import (
    Action,
    DomainPolicy,
    DomainState,
    HostProperties,
    Loan,
    Mode,
)
from broker.simulator.workload import Workload

INF = math.inf
VECTOR_MIN = 48  # queues longer than this are scanned with numpy's help
END, VM_UP, VM_DOWN, REQUEUE = 0, 1, 2, 3
BOOTING, UP, DRAINING, HALTING = 0, 1, 2, 3
# What the run log records (``Simulation.log``, kept when ``SimConfig.check_invariants``): one
# tuple per happening, in the order the engine did it, read by broker.simulator.invariants:
#   (t, LOG_START, domain, job, own nodes, tuple of VM ids)   a job starts (one or the other)
#   (t, LOG_END, domain, job, 0, ())                          it ran to its end
#   (t, LOG_PREEMPT, domain, job, 0, ())                      its VMs were taken back
#   (t, LOG_LEND, lender, VM id, borrower, ())                a node leaves its owner as a VM
#   (t, LOG_UP | LOG_HALT | LOG_DOWN, borrower, VM id, 0, ())  VM booted, halting, node back
LOG_START, LOG_END, LOG_PREEMPT, LOG_LEND, LOG_UP, LOG_HALT, LOG_DOWN = range(7)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """interval: broker period (s); boot_delay, halt_delay: VM start and stop (s); slowdown:
    extra run time of a job on VMs (0.15 = 15 % slower); sharing: brokers trade at all;
    epoch: the absolute time (Unix seconds) of t = 0, for the policies' time-of-day windows;
    check_invariants: keep the run log (``Simulation.log``) that
    :func:`broker.simulator.invariants.check_run` replays to check the run;
    requeue_delay: seconds a preempted job waits before it may start again (Slurm makes a
    requeued batch job eligible about ten seconds later; 0: at once, as the paper has it)."""

    interval: float = 3600.0
    boot_delay: float = 40.0
    halt_delay: float = 16.0
    slowdown: float = 0.15
    sharing: bool = True
    epoch: float = 0.0
    check_invariants: bool = False
    requeue_delay: float = 0.0


class VM:
    __slots__ = ("id", "lender", "borrower", "state", "job", "started", "busy_since", "loan",
                 "draining_since", "cap")

    def __init__(self, vid: int, lender: int, borrower: int, started: float,
                 cap: float = INF) -> None:
        self.id = vid
        self.lender = lender
        self.borrower = borrower
        self.state = BOOTING
        self.job = -1
        self.started = started
        self.busy_since = -1.0
        self.loan: Loan | None = None  # Simulation._loan's record, until the VM's job changes
        self.draining_since = -1.0  # when its lender began to drain it (-1: not draining)
        self.cap = cap  # longest estimate of a job it may run (the lender's max_job_s)


@dataclass(slots=True)
class DomainStats:
    """Counters kept while running; per-job figures come from Domain.start/end at the end."""

    preemptions: int = 0
    lost_node_seconds: float = 0.0
    busy_own_node_seconds: float = 0.0  # own nodes, own jobs or peers' jobs on lent VMs
    borrowed_node_seconds: float = 0.0
    lent_node_seconds: float = 0.0
    first_submit: float = INF
    last_end: float = 0.0  # end of the domain's last own job
    busy_from: float = INF  # first and last moment an own node was busy (own job or lent VM)
    busy_until: float = 0.0


class Domain:
    """Simulated state of one domain (counts of nodes, queue, VMs)."""

    def __init__(self, index: int, workload: Workload, policy: DomainPolicy,
                 host: HostProperties) -> None:
        self.index = index
        self.name = workload.name
        self.w = workload
        self.policy = policy
        self.host = host
        self.capacity = workload.capacity
        n = len(workload)
        self.size = workload.nodes
        self.run = workload.runtime
        self.est = workload.estimate
        self.size_np = np.asarray(workload.nodes, dtype=np.int64)
        self.est_np = np.asarray(workload.estimate, dtype=np.float64)
        self.submit = workload.submit
        self.next_submit = 0
        self.free = workload.capacity  # own physical nodes free (not busy, not lent)
        self.lent = 0  # own nodes running (or halting) a peer's VM
        self.vms: dict[int, VM] = {}  # borrowed VMs, any state
        # VMs on own nodes for peers, until back: borrower index -> VM id -> VM
        self.loans: dict[int, dict[int, VM]] = {}
        self.idle_vms: list[VM] = []  # borrowed, up, no job, not draining
        self.active_vms = 0  # borrowed VMs not halting (|V_a|)
        self.queue: list[int] = []
        self.waiting_nodes = 0
        self.running_nodes = 0
        self.run_phys: list[tuple[float, int]] = []  # (estimated end, job) on physical nodes
        self.start = [-1.0] * n
        self.end = [-1.0] * n
        self.attempt = [0] * n
        self.on_vms = bytearray(n)  # 1 while (or if) the job's current run is on borrowed VMs
        self.history: dict[int, list[tuple[float, float, bool]]] = {}  # cut runs: start, end,
        # on VMs
        self.job_vms: dict[int, list[VM]] = {}
        self.finished = 0
        self.valid = False  # shadow/extra still hold; only new arrivals need trying
        self.shadow = INF
        self.extra = 0
        self.new_jobs: list[int] = []
        self.dirty = False
        self.last_count_t = 0.0
        self.stats = DomainStats()
        # per-interval series
        self.window_done = 0
        self.window_resp = 0.0
        self.series: list[tuple] = []

    # -- accounting ---------------------------------------------------------------------
    def count_to(self, now: float) -> None:
        dt = now - self.last_count_t
        if dt > 0:
            self.stats.borrowed_node_seconds += len(self.vms) * dt
            self.stats.lent_node_seconds += self.lent * dt
            self.last_count_t = now

    def state(self) -> DomainState:
        return DomainState(
            physical=self.capacity,
            lent=self.lent,
            borrowed=self.active_vms,
            waiting_nodes=self.waiting_nodes,
            running_nodes=self.running_nodes,
            busy_physical=self.capacity - self.lent - self.free,
            idle_borrowed=len(self.idle_vms),
        )


@dataclass(slots=True)
class RunResult:
    sharing: bool
    domains: list[Domain]
    events: int
    end_time: float


class Simulation:
    """One run (with or without sharing) over the given workloads and policies."""

    def __init__(
        self,
        workloads: Sequence[Workload],
        policies: Sequence[DomainPolicy] | None = None,
        config: SimConfig = SimConfig(),
        hosts: Sequence[HostProperties] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        for w in workloads:
            w.check_capacity()
        names = [w.name for w in workloads]
        if len(set(names)) != len(names):
            raise ValueError(f"domain names must differ: {names}")
        policies = policies or [DomainPolicy() for _ in workloads]
        hosts = hosts or [HostProperties(cpus=1, memory_mb=1 << 20, disk_gb=1 << 20)
                          for _ in workloads]
        self.cfg = config
        self.domains = [Domain(i, w, p, h) for i, (w, p, h) in
                        enumerate(zip(workloads, policies, hosts))]
        self.heap: list[tuple] = []
        self.seq = 0
        self.vm_seq = 0
        self.now = 0.0
        self.events = 0
        self.progress = progress
        self.total_jobs = sum(len(w) for w in workloads)
        self.finished = 0
        self.on_check: Callable[[Simulation], None] | None = None
        self.log: list[tuple] | None = [] if config.check_invariants else None
        # the lenders' caps on the length of a borrower's job on their nodes (max_job_s)
        self.caps = [INF if p.reclamation.terms.max_job_s is None
                     else p.reclamation.terms.max_job_s for p in policies]
        self.capped = any(c < INF for c in self.caps)

    # -- event helpers ------------------------------------------------------------------
    def push(self, t: float, kind: int, dom: int, a: object, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, dom, a, b))

    # -- job start / end ----------------------------------------------------------------
    def start_phys(self, d: Domain, j: int, now: float) -> None:
        s = d.size[j]
        d.free -= s
        d.start[j] = now
        d.on_vms[j] = 0
        d.running_nodes += s
        d.waiting_nodes -= s
        insort(d.run_phys, (now + d.est[j], j))
        self.push(now + d.run[j], END, d.index, j, d.attempt[j])
        if self.log is not None:
            self.log.append((now, LOG_START, d.index, j, s, ()))

    def vm_room(self, d: Domain, j: int) -> int:
        """How many of d's idle VMs job j may run on (its estimate within their lender's cap)."""
        if not self.capped:
            return len(d.idle_vms)
        e = d.est[j]
        return sum(1 for vm in d.idle_vms if e <= vm.cap)

    def start_vms(self, d: Domain, j: int, now: float) -> None:
        s = d.size[j]
        idle = d.idle_vms
        if self.capped:
            # the VMs whose cap admits the job, tightest cap first (the roomier ones stay for
            # longer jobs), then as without caps: the last idle first
            e = d.est[j]
            fit = sorted((vm for vm in reversed(idle) if e <= vm.cap), key=lambda v: v.cap)
            chosen = {vm.id for vm in fit[:s]}
            vms = [vm for vm in idle if vm.id in chosen]
            idle[:] = [vm for vm in idle if vm.id not in chosen]
        else:
            vms = idle[-s:]
            del idle[-s:]
        for vm in vms:
            vm.job = j
            vm.busy_since = now
            vm.loan = None
        d.job_vms[j] = vms
        d.start[j] = now
        d.on_vms[j] = 1
        d.running_nodes += s
        d.waiting_nodes -= s
        self.push(now + d.run[j] * (1.0 + self.cfg.slowdown), END, d.index, j, d.attempt[j])
        if self.log is not None:
            self.log.append((now, LOG_START, d.index, j, 0, tuple(vm.id for vm in vms)))

    def _release(self, d: Domain, j: int, now: float, finished: bool) -> None:
        """Free the nodes of running job j (ended or preempted)."""
        s = d.size[j]
        d.running_nodes -= s
        elapsed = now - d.start[j]
        vms = d.job_vms.pop(j, None)
        if vms is None:
            key = (d.start[j] + d.est[j], j)
            i = bisect_left(d.run_phys, key)
            del d.run_phys[i]
            d.free += s
            st = d.stats
            st.busy_own_node_seconds += s * elapsed
            if now > st.busy_until:
                st.busy_until = now
            if d.start[j] < st.busy_from:
                st.busy_from = d.start[j]
        else:
            domains = self.domains
            for vm in vms:
                st = domains[vm.lender].stats
                st.busy_own_node_seconds += elapsed
                if now > st.busy_until:
                    st.busy_until = now
                if d.start[j] < st.busy_from:
                    st.busy_from = d.start[j]
                vm.job = -1
                vm.busy_since = -1.0
                vm.loan = None
                if vm.state == UP:
                    d.idle_vms.append(vm)
                elif vm.state == DRAINING:
                    self.halt(vm, now)
        if not finished:
            if self.log is not None:
                self.log.append((now, LOG_PREEMPT, d.index, j, 0, ()))
            d.history.setdefault(j, []).append((d.start[j], now, vms is not None))
            d.stats.preemptions += 1
            d.stats.lost_node_seconds += s * elapsed
            d.attempt[j] += 1
            d.start[j] = -1.0
            d.waiting_nodes += s  # in the queue the broker sees at once, startable later
            if self.cfg.requeue_delay > 0:
                self.push(now + self.cfg.requeue_delay, REQUEUE, d.index, j)
            else:
                insort(d.queue, j)
        d.valid = False
        d.dirty = True

    def finish(self, d: Domain, j: int, now: float) -> None:
        if self.log is not None:
            self.log.append((now, LOG_END, d.index, j, 0, ()))
        self._release(d, j, now, finished=True)
        d.end[j] = now
        d.finished += 1
        self.finished += 1
        if now > d.stats.last_end:
            d.stats.last_end = now
        d.window_done += 1
        d.window_resp += now - d.submit[j]

    # -- VMs ----------------------------------------------------------------------------
    def lend(self, lender: Domain, borrower: Domain, count: int, now: float) -> None:
        lender.count_to(now)
        borrower.count_to(now)
        lender.free -= count
        lender.lent += count
        lender.valid = False
        loans = lender.loans.setdefault(borrower.index, {})
        booting = []
        for _ in range(count):
            self.vm_seq += 1
            vm = VM(self.vm_seq, lender.index, borrower.index, now, self.caps[lender.index])
            borrower.vms[vm.id] = vm
            loans[vm.id] = vm
            booting.append(vm)
            if self.log is not None:
                self.log.append((now, LOG_LEND, lender.index, vm.id, borrower.index, ()))
        borrower.active_vms += count
        # one event for the VMs lent together: they come up together, in the order lent
        self.push(now + self.cfg.boot_delay, VM_UP, borrower.index, booting)

    def halt(self, vm: VM, now: float) -> None:
        """Stop a borrowed VM (preempting its job first); the node returns after halt_delay."""
        b = self.domains[vm.borrower]
        if vm.state == HALTING:
            return
        if vm.job >= 0:
            self._release(b, vm.job, now, finished=False)
            if vm.state == HALTING:  # a draining VM is halted by the release itself
                return
        if vm.state == UP:
            b.idle_vms.remove(vm)
        vm.state = HALTING
        if self.log is not None:
            self.log.append((now, LOG_HALT, b.index, vm.id, 0, ()))
        b.active_vms -= 1
        b.valid = False
        b.dirty = True
        self.push(now + self.cfg.halt_delay, VM_DOWN, b.index, vm)

    def drain(self, vm: VM, now: float) -> None:
        if vm.state == HALTING or vm.state == DRAINING:
            return
        if vm.job < 0:
            self.halt(vm, now)
            return
        vm.state = DRAINING
        vm.draining_since = now
        vm.loan = None
        self.domains[vm.borrower].valid = False

    def vm_up(self, vm: VM) -> None:
        if vm.state != BOOTING:
            return
        vm.state = UP
        if self.log is not None:
            self.log.append((self.now, LOG_UP, vm.borrower, vm.id, 0, ()))
        d = self.domains[vm.borrower]
        d.idle_vms.append(vm)
        d.valid = False
        d.dirty = True

    def vm_down(self, vm: VM, now: float) -> None:
        b = self.domains[vm.borrower]
        lender = self.domains[vm.lender]
        if self.log is not None:
            self.log.append((now, LOG_DOWN, b.index, vm.id, 0, ()))
        b.count_to(now)
        lender.count_to(now)
        del b.vms[vm.id]
        del lender.loans[b.index][vm.id]
        lender.lent -= 1
        lender.free += 1
        lender.valid = False
        lender.dirty = True

    # -- EASY scheduling ----------------------------------------------------------------
    def schedule(self, d: Domain, now: float) -> None:
        d.dirty = False
        if d.valid and d.new_jobs and d.queue[0] != d.new_jobs[0]:
            self._try_new(d, now)
        else:
            self._full_pass(d, now)
        d.new_jobs.clear()

    def _try_new(self, d: Domain, now: float) -> None:
        """Nothing was freed since the last pass: only the newly arrived jobs may start."""
        size, est = d.size, d.est
        started = None
        for j in d.new_jobs:
            s = size[j]
            if s <= d.free and now + est[j] <= d.shadow:
                self.start_phys(d, j, now)
            elif s <= d.free and s <= d.extra:
                d.extra -= s
                self.start_phys(d, j, now)
            elif s <= len(d.idle_vms) and s <= self.vm_room(d, j):  # as in the full pass
                self.start_vms(d, j, now)
            else:
                continue
            if started is None:
                started = set()
            started.add(j)
        if started:
            d.queue = [j for j in d.queue if j not in started]

    def _full_pass(self, d: Domain, now: float) -> None:
        q = d.queue
        n = len(q)
        size, est = d.size, d.est
        i = 0
        while i < n:
            j = q[i]
            s = size[j]
            if s <= d.free:
                self.start_phys(d, j, now)
            elif s <= len(d.idle_vms) and s <= self.vm_room(d, j):
                self.start_vms(d, j, now)
            else:
                break
            i += 1
        if i == n:
            d.queue = []
            d.valid = True
            d.shadow = INF
            d.extra = 0
            return
        head = q[i]
        hs = size[head]
        free = d.free
        avail = free
        shadow = INF
        extra = 0
        if hs <= d.capacity - d.lent:
            run = d.run_phys
            m = len(run)
            k = 0
            while k < m:
                e, j = run[k]
                avail += size[j]
                k += 1
                if avail >= hs:
                    # every job ending at the shadow time frees its nodes then, not only the
                    # first that makes room for the head
                    while k < m and run[k][0] == e:
                        avail += size[run[k][1]]
                        k += 1
                    shadow = e
                    extra = avail - hs
                    break
        idle_vms = d.idle_vms
        if n - i - 1 > VECTOR_MIN:
            rest = self._backfill_vector(d, q, i, now, shadow, extra)
            extra = d.extra
        else:
            rest = [head]
            for k in range(i + 1, n):
                if d.free == 0 and not idle_vms:
                    rest.extend(q[k:])
                    break
                j = q[k]
                s = size[j]
                if s <= d.free:
                    if now + est[j] <= shadow:
                        self.start_phys(d, j, now)
                        continue
                    if s <= extra:
                        extra -= s
                        self.start_phys(d, j, now)
                        continue
                if s <= len(idle_vms) and s <= self.vm_room(d, j):
                    self.start_vms(d, j, now)
                    continue
                rest.append(j)
        d.queue = rest
        d.shadow = shadow
        d.extra = extra
        d.valid = True

    def _backfill_vector(self, d: Domain, q: list[int], i: int, now: float, shadow: float,
                         extra: int) -> list[int]:
        """The backfill scan of a long queue: numpy finds the jobs that could start under the
        state before the scan (a superset: nodes only get fewer as jobs start), then they are
        tried in queue order exactly as the plain loop would."""
        tail = q[i + 1:]
        idle_vms = d.idle_vms
        if d.free == 0 and not idle_vms:
            d.extra = extra
            return q[i:]
        idx = np.array(tail, dtype=np.int64)
        sz = d.size_np[idx]
        mask = (sz <= d.free) & ((now + d.est_np[idx] <= shadow) | (sz <= extra))
        if idle_vms:
            if self.capped:  # idle VMs each job's estimate fits, from the VMs' sorted caps
                caps = np.sort(np.array([vm.cap for vm in idle_vms], dtype=np.float64))
                room = len(caps) - np.searchsorted(caps, d.est_np[idx], side="left")
                mask |= sz <= room
            else:
                mask |= sz <= len(idle_vms)
        candidates = np.flatnonzero(mask)
        if not candidates.size:
            d.extra = extra
            return q[i:]
        size, est = d.size, d.est
        started = set()
        for c in candidates.tolist():
            if d.free == 0 and not idle_vms:
                break
            j = tail[c]
            s = size[j]
            if s <= d.free:
                if now + est[j] <= shadow:
                    self.start_phys(d, j, now)
                    started.add(j)
                    continue
                if s <= extra:
                    extra -= s
                    self.start_phys(d, j, now)
                    started.add(j)
                    continue
            if s <= len(idle_vms) and s <= self.vm_room(d, j):
                self.start_vms(d, j, now)
                started.add(j)
        d.extra = extra
        if not started:
            return q[i:]
        rest = [q[i]]
        rest.extend(j for j in tail if j not in started)
        return rest

    # -- broker -------------------------------------------------------------------------
    def loans_of(self, lender: Domain) -> list[VM]:
        """The lender's VMs not halting, by borrower, then in the order they were lent."""
        by = lender.loans
        return [vm for b in sorted(by) for vm in by[b].values() if vm.state != HALTING]

    def _nothing_to_trade(self) -> bool:
        """True when no intent can be anything but HOLD or an unmatched LEND.

        Only a domain with n_a > 0 can borrow or reclaim and only one with n_a < 0 and
        borrowed VMs can return; leases end whatever the need. This skips the policy calls
        in the many intervals where every domain is served by its own nodes.
        """
        for d in self.domains:
            n = d.waiting_nodes + d.running_nodes - (d.capacity - d.lent + d.active_vms)
            if n > 0 or (n < 0 and d.active_vms):
                return False
            if d.lent and d.policy.reclamation.terms.mode is Mode.LEASE:
                return False
            if d.lent and d.policy.reclamation.terms.drain_deadline_s is not None:
                return False  # a draining loan may reach its deadline
            if self.capped and any(vm.cap < INF for vm in d.idle_vms):
                return False  # an idle capped VM may fit no waiting job
        return True

    def waiting(self, d: Domain) -> trade.Waiting:
        """d's waiting work by requested time, for the trade core (:class:`trade.Waiting`):
        the nodes its queued jobs need whose estimate (requested time) is within a cap, and
        its spare VMs (idle or booting)."""
        memo: dict[float, int] = {}

        def within(cap: float) -> int:
            n = memo.get(cap)
            if n is None:
                q = d.queue
                if len(q) > VECTOR_MIN:
                    idx = np.asarray(q, dtype=np.int64)
                    n = int(d.size_np[idx][d.est_np[idx] <= cap].sum())
                else:
                    size, est = d.size, d.est
                    n = sum(size[j] for j in q if est[j] <= cap)
                memo[cap] = n
            return n

        booting = sum(1 for vm in d.vms.values() if vm.state == BOOTING)
        return trade.Waiting(within, len(d.idle_vms) + booting)

    def broker_round(self, now: float) -> None:
        """Each domain's broker interval: the trade core decides (:mod:`broker.negotiation.trade`),
        the simulator carries the effects out at simulated time (the VMs' boot and halt
        delays). Times given to the core are absolute (``epoch + now``); loans and idle VMs are
        listed only when the core asks for them.

        Seeing every domain at once, the simulator runs the core's steps phase by phase for
        all domains: loans that end (leases, drained loans), then every domain's intent from
        the states after them, then the effects domain by domain, then the requests.
        """
        if self._nothing_to_trade():
            return
        abs_now = self.cfg.epoch + now
        domains = self.domains
        loan = self._loan
        for d in domains:
            if not d.lent:
                continue
            ended = trade.endings(
                d.policy, lambda: [loan(vm) for vm in self.loans_of(d)],
                lambda: [loan(vm) for vm in self.loans_of(d) if vm.state == DRAINING], abs_now)
            if ended:
                vms = {vm.id: vm for vm in self.loans_of(d)}
                for e in ended:
                    self.halt(vms[e.loan], now)
        states = [d.state() for d in domains]
        rounds = []
        capped = self.capped
        for d, state in zip(domains, states):
            if capped:  # the core sees the VMs' caps and the queue by requested time
                r = trade.decide(
                    d.policy, state, abs_now,
                    lent=lambda: [loan(vm) for vm in self.loans_of(d) if vm.state != DRAINING],
                    held=[trade.Holding(vm.id, cap=None if vm.cap == INF else vm.cap)
                          for vm in reversed(d.idle_vms)],
                    waiting=self.waiting(d) if d.idle_vms else None)
            else:
                r = trade.decide(
                    d.policy, state, abs_now,
                    lent=lambda: [loan(vm) for vm in self.loans_of(d) if vm.state != DRAINING],
                    held=lambda: [trade.Holding(vm.id) for vm in reversed(d.idle_vms)])
            if r.effects:
                vms = {vm.id: vm for vm in self.loans_of(d)} if d.lent else {}
                idle = {vm.id: vm for vm in d.idle_vms}
                for e in r.effects:
                    if isinstance(e, trade.TakeBack):
                        self.halt(vms[e.loan], now)
                    elif isinstance(e, trade.Drain):
                        self.drain(vms[e.loan], now)
                    elif isinstance(e, trade.GiveBack):
                        self.halt(idle[e.holding], now)
            rounds.append((d, r))
        # Requests: each asking domain (the most wanting first) asks the domains whose
        # interval found nodes to lend; every lender answers from its state at that moment.
        borrowers = [(d, e.nodes) for d, r in rounds for e in r.effects
                     if isinstance(e, trade.Ask)]
        lenders = [d for d, r in rounds if r.intent.action is Action.LEND]
        if not borrowers or not lenders:
            return
        borrowers.sort(key=lambda x: (-x[1], x[0].index))
        for b, wanted in borrowers:
            candidates = []
            for rank, lender in enumerate(lenders):
                pol = lender.policy
                got = trade.answer(pol, lender.state(), b.name, wanted, abs_now,
                                   available=lender.free)
                if got.ok:  # a lender's hosts are alike: one candidate for all it offers
                    candidates.append(trade.Candidate(lender.index, lender.host,
                                                      pol.reclamation.terms, (rank,),
                                                      count=got.count))
            fitting, _turned = trade.screen(b.policy, candidates, b.active_vms, abs_now)
            waiting = self.waiting(b) if capped else None
            for index, hosts in trade.choose(fitting, wanted, waiting=waiting).taken.items():
                self.lend(domains[index], b, sum(c.count for c in hosts), now)

    def _loan(self, vm: VM) -> Loan:
        """A simulated VM as the trade core sees a loan (absolute times); made once and kept
        on the VM until its job changes (start_vms, _release clear it)."""
        loan = vm.loan
        if loan is None:
            epoch = self.cfg.epoch
            loan = vm.loan = Loan(vm.id, self.domains[vm.borrower].name, epoch + vm.started,
                                  epoch + vm.busy_since if vm.job >= 0 else None,
                                  epoch + vm.draining_since if vm.state == DRAINING else None)
        return loan

    def sample(self, now: float) -> None:
        for d in self.domains:
            d.series.append((
                now, d.waiting_nodes + d.running_nodes, d.waiting_nodes, d.running_nodes,
                len(d.vms), d.lent, d.window_done,
                d.window_resp / d.window_done if d.window_done else float("nan"),
            ))
            d.window_done = 0
            d.window_resp = 0.0

    # -- main loop ----------------------------------------------------------------------
    def run(self) -> RunResult:
        domains = self.domains
        heap = self.heap
        cfg = self.cfg
        interval = cfg.interval
        next_tick = interval
        # next submission over all domains, as a small heap of (time, domain)
        subs = [(d.submit[0], d.index) for d in domains if len(d.w)]
        heapq.heapify(subs)
        for d in domains:
            if len(d.w):
                d.stats.first_submit = d.submit[0]
        progress = self.progress
        reported = 0
        total = self.total_jobs
        stalled = 0
        heappop, heappush = heapq.heappop, heapq.heappush
        finish, schedule, check = self.finish, self.schedule, self.on_check
        events = 0
        while self.finished < total:
            t = INF
            if heap:
                t = heap[0][0]
            if subs and subs[0][0] < t:
                t = subs[0][0]
            if next_tick <= t:
                if t == INF:
                    stalled += 1
                    if stalled > 100_000:
                        raise RuntimeError("simulation stalled: jobs wait that nothing can start")
                t = next_tick
                self.now = t
                if cfg.sharing:
                    self.broker_round(t)
                self.sample(t)
                next_tick += interval
                for d in domains:
                    if d.dirty:
                        schedule(d, t)
                if check:
                    check(self)
                continue
            self.now = t
            # timed events at t
            while heap and heap[0][0] <= t:
                _, _, kind, di, a, b = heappop(heap)
                events += 1
                d = domains[di]
                if kind == END:
                    if d.attempt[a] == b and d.start[a] >= 0:
                        finish(d, a, t)
                elif kind == VM_UP:  # a: the VMs of one loan, up together
                    for vm in a:
                        self.vm_up(vm)
                    events += len(a) - 1
                elif kind == REQUEUE:  # a preempted job may start again
                    insort(d.queue, a)
                    d.valid = False
                    d.dirty = True
                else:
                    self.vm_down(a, t)
            # submissions at t
            while subs and subs[0][0] <= t:
                _, di = heappop(subs)
                d = domains[di]
                sub = d.submit
                k0 = k = d.next_submit
                n = len(sub)
                while k < n and sub[k] <= t:
                    k += 1
                arrived = range(k0, k)
                d.queue.extend(arrived)
                d.new_jobs.extend(arrived)
                d.waiting_nodes += sum(d.size[k0:k])
                events += k - k0
                d.next_submit = k
                d.dirty = True
                if k < n:
                    heappush(subs, (sub[k], di))
            for d in domains:
                if d.dirty:
                    schedule(d, t)
            if check:
                check(self)
            if progress is not None and self.finished - reported >= 2000:
                progress(self.finished - reported)
                reported = self.finished
        if progress is not None and self.finished > reported:
            progress(self.finished - reported)
        self.events += events
        end = self.now
        for d in domains:
            d.count_to(end)
        self.sample(end)
        return RunResult(cfg.sharing, domains, self.events, end)
