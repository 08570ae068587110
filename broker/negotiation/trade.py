"""The trade core: every decision of a trade, as plain functions fed what was observed.

Nothing here does I/O or reads a clock. The callers observe (their domain's
:class:`~broker.policy.DomainState`, the loans they hold, the offers they got, ``now``) and
interpret the effects that come back: the live broker (:mod:`broker.service.broker`) over the
network, SQLite, the scheduler and ansible-runner; the simulator
(:meth:`broker.simulator.engine.Simulation.broker_round`) at simulated time. Neither decides a
trade itself.

One interval of a broker is :func:`interval`; a lender answers a request with :func:`answer`
(offering the hosts :func:`suited` to its needs); a borrower sorts the hosts it was offered
with :func:`screen` and takes the best with :func:`choose`. A lender whose policy says so
advertises idle hosts unasked (:func:`adverts`); a borrower takes an advert when it would ask
now (:func:`take_advert`).

A lender may cap the requested time of the borrower's jobs its loans run
(``reclamation.max_job_s``, in its terms). A borrower that observes its waiting work by
requested time (:class:`Waiting`) takes from such an offer no more nodes than its waiting jobs
that fit the cap need (:func:`choose`), and gives back an idle holding whose cap no waiting job
fits (:func:`decide`). Without that observation (``waiting`` None) caps play no part here.

Effects
-------
``Ask(nodes)``                ask peers for ``nodes`` machines (borrower).
``TakeBack(loan, reason)``    stop a lent machine now; a job on it is preempted (lender).
``Drain(loan, reason)``       a lent machine returns when its job ends; nothing is preempted
                              (lender; it comes back as a ``TakeBack`` once the loan is idle).
``GiveBack(holding, reason)`` return a borrowed machine (or a contract's machines) (borrower).

A peer's word on a contract (its state, in a heartbeat) is followed with :func:`follow`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from broker.negotiation.contracts import Contract, ContractState, Role
from broker.policy import (
    Action,
    DomainPolicy,
    DomainState,
    HostProperties,
    Intent,
    Loan,
    Mode,
    Requirements,
)
from broker.policy import Terms as PolicyTerms

# ------------------------------------------------------------------------------ observations

#: Loans (or holdings) as a list, or as a function that lists them: the core calls it only when
#: a decision needs them (the simulator's rounds mostly do not).
Listed = Sequence | Callable[[], Sequence]


def _listed(items: Listed) -> Sequence:
    return items() if callable(items) else items


@dataclass(frozen=True, slots=True)
class Holding:
    """Borrowed machines that are returned together (a live contract's nodes, one simulated
    VM): ``nodes`` of them, ``idle`` when none runs a job and all are up."""

    id: Hashable
    nodes: int = 1
    idle: bool = True
    cap: float | None = None  # the lender's cap on the requested time of a job (max_job_s)


@dataclass(frozen=True, slots=True)
class Waiting:
    """The borrower's waiting work by requested time, as a lender's cap on its loans' jobs
    (``reclamation.max_job_s``) sees it.

    within: ``within(cap)`` is how many nodes the waiting jobs need whose requested time is at
            most ``cap`` seconds (the jobs a loan under that cap may run).
    spare:  borrowed machines held that run no job yet (idle or booting): a fitting job takes
            them before any new loan.
    """

    within: Callable[[float], int]
    spare: int = 0

    def room(self, cap: float) -> int:
        """How many nodes of a loan capped at ``cap`` the waiting jobs could use now."""
        return self.within(cap) - self.spare


@dataclass(frozen=True, slots=True)
class Candidate:
    """One offered host (or ``count`` alike): the offer it came in (``offer``), what it
    provides, the lender's terms, and its rank (lower is better: live, the RTT; simulated, the
    lender's order)."""

    offer: Hashable
    host: HostProperties
    terms: PolicyTerms
    rank: tuple = ()
    ref: object = field(default=None, compare=False)  # the caller's own record of the host
    count: int = 1
    peer: str | None = None  # the lender (a location rule may name it)


# ------------------------------------------------------------------------------ effects


@dataclass(frozen=True, slots=True)
class Ask:
    nodes: int


@dataclass(frozen=True, slots=True)
class TakeBack:
    loan: Hashable
    reason: str


@dataclass(frozen=True, slots=True)
class Drain:
    loan: Hashable
    reason: str


@dataclass(frozen=True, slots=True)
class GiveBack:
    holding: Hashable
    reason: str


Effect = Ask | TakeBack | Drain | GiveBack


@dataclass(frozen=True, slots=True)
class Round:
    """What one interval decided: the policy's intent and the effects to carry out, in order."""

    intent: Intent
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """A lender's answer to a request: offer ``count`` hosts, or decline (``reason``)."""

    count: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.count > 0


@dataclass(frozen=True, slots=True)
class Choice:
    """What a borrower takes: the chosen hosts per offer, and why each other offer is turned
    down."""

    taken: dict[Hashable, tuple[Candidate, ...]]
    refused: dict[Hashable, str]


# ------------------------------------------------------------------------------ one interval

LEASE_ENDED = "lease ended"
DRAINED = "drained: no job runs on it any more"
DRAIN_DEADLINE = "drain deadline passed: its job is requeued"
CO_LOCATED = "waiting for co-located nodes"
SUFFICE = "idle, and our own nodes suffice"
UNFIT = "idle, and no waiting job fits its cap"


def endings(policy: DomainPolicy, lent: Listed, draining: Listed,
            now: float) -> tuple[TakeBack, ...]:
    """Loans that end whatever the demand: leases that ran out, draining loans that no
    longer run a job, and draining loans past the policy's drain deadline (their job is
    preempted)."""
    out: list[TakeBack] = []
    if policy.reclamation.mode is Mode.LEASE:
        out.extend(TakeBack(i, LEASE_ENDED)
                   for i in policy.reclamation.expired(_listed(lent), now))
    draining = _listed(draining)
    out.extend(TakeBack(l.id, DRAINED) for l in draining if l.busy_since is None)
    out.extend(TakeBack(i, DRAIN_DEADLINE)
               for i in policy.reclamation.overdue(draining, now))
    least = policy.lending.min_free_disk_gb
    if least is not None:
        gone = {e.loan for e in out}
        out.extend(TakeBack(l.id, f"free disk {l.free_disk_gb:g} GB < {least} GB")
                   for l in (*_listed(lent), *draining)
                   if l.id not in gone and l.free_disk_gb is not None
                   and l.free_disk_gb < least)
    return tuple(out)


def decide(
    policy: DomainPolicy,
    state: DomainState,
    now: float,
    *,
    lent: Listed = (),
    held: Listed = (),
    asking: bool = False,
    waiting: Waiting | None = None,
) -> Round:
    """The intent of the interval and what it takes: reclaim (loans taken back or drained,
    as the reclamation policy plans), borrow (``Ask``), or return idle borrowed machines.

    With ``waiting`` observed, idle holdings whose cap (``Holding.cap``) no waiting job fits
    are given back first, whatever the intent (:data:`UNFIT`); they count towards a return.
    """
    effects: list[Effect] = []
    intent = policy.intent(state, now)
    unfit: set[Hashable] = set()
    if waiting is not None:
        fits: dict[float, int] = {}
        for h in _listed(held):
            if h.idle and h.cap is not None:
                n = fits.get(h.cap)
                if n is None:
                    n = fits[h.cap] = waiting.within(h.cap)
                if n <= 0:
                    unfit.add(h.id)
                    effects.append(GiveBack(h.id, f"{UNFIT} ({h.cap:g} s)"))
    if intent.action is Action.RECLAIM:
        plan = policy.reclamation.plan(_listed(lent), intent.nodes, now)
        why = f"own demand needs {intent.nodes} node(s)"
        effects.extend(TakeBack(i, why) for i in plan.now)
        effects.extend(Drain(i, why) for i in plan.drain)
    elif intent.action is Action.BORROW and not asking and intent.nodes > 0:
        effects.append(Ask(intent.nodes))
    elif intent.action is Action.RETURN:
        left = intent.nodes
        held = _listed(held)
        if unfit:
            left -= sum(h.nodes for h in held if h.id in unfit)
        for h in held:
            if left <= 0:
                break
            if h.idle and h.nodes <= left and h.id not in unfit:
                left -= h.nodes
                effects.append(GiveBack(h.id, SUFFICE))
    return Round(intent, tuple(effects))


def interval(
    policy: DomainPolicy,
    state: DomainState,
    now: float,
    *,
    lent: Sequence[Loan] = (),
    draining: Sequence[Loan] = (),
    held: Sequence[Holding] = (),
    asking: bool = False,
    waiting: Waiting | None = None,
) -> Round:
    """One broker interval of one domain: :func:`endings`, then :func:`decide` over the
    loans left.

    lent:           loans this domain has made that run, not draining (with ``busy_since``
                    set where the borrower's job runs on them).
    draining:       loans already told to drain; each comes back once it runs no job.
    held:           machines borrowed and up, in the order they are to be given back.
    asking:         a request of ours is still open (no new one is sent).
    waiting:        the waiting work by requested time (:class:`Waiting`; None: not
                    observed, caps play no part).

    The order of the effects is the order to carry them out.
    """
    lent, draining = _listed(lent), _listed(draining)
    ended = endings(policy, lent, draining, now)
    gone = {e.loan for e in ended}
    r = decide(policy, state, now, lent=[l for l in lent if l.id not in gone], held=held,
               asking=asking, waiting=waiting)
    return Round(r.intent, ended + r.effects)


# ------------------------------------------------------------------------------ negotiation


def rest_after_decline(interval_s: float) -> float:
    """How long a borrower leaves a peer that declined before asking it again: three
    intervals, at least 5 s (no request storm while the peer's own policy says no)."""
    return max(3 * interval_s, 5.0)


def refusal(policy: DomainPolicy, peer: str) -> str:
    """Why ``peer`` may not borrow from this domain at all ("" when it may): answered before
    the domain is even looked at."""
    return "" if policy.lending.allows_peer(peer) else "lending policy: peer not allowed"


def answer(
    policy: DomainPolicy,
    state: DomainState,
    peer: str,
    asked: int,
    now: float,
    *,
    available: int,
    pending: int = 0,
    unfit: str = "",
) -> Answer:
    """The lender's answer to ``peer`` asking for ``asked`` machines: how many to offer.

    available: idle lending hosts not already offered or lent that meet the request's needs
               (:func:`suited`).
    pending:   hosts offered in proposals not yet accepted (they count against the policy).
    unfit:     why idle hosts were left out for the request's needs (the decline says it
               when none is left).
    """
    refused = refusal(policy, peer)
    if refused:
        return Answer(0, refused)
    count = min(policy.lending.offerable(state, now, peer=peer, tz=policy.tz) - pending, asked)
    if count <= 0:
        return Answer(0, f"lending policy offers {max(count, 0)} now")
    count = min(count, available)
    if count <= 0:
        return Answer(0, f"no idle lending host meets the request's needs ({unfit})" if unfit
                      else "no idle lending host")
    return Answer(count)


def lendable(open_loans: Iterable[Contract], lending_hosts: Sequence[str],
             idle: Collection[str]) -> tuple[list[str], int]:
    """Which of the lender's ``lending_hosts`` (scheduler node names) may be offered now: idle,
    and neither offered in an open proposal nor lent; and how many hosts open proposals offer
    (``pending`` for :func:`answer` and :func:`adverts`). ``open_loans``: the lender's open
    contracts."""
    reserved: set[str] = set()
    pending = 0
    for c in open_loans:
        if c.state is ContractState.PROPOSED:
            reserved.update(h.name for h in c.offered)
            pending += len(c.offered)
        else:
            reserved.update(c.host_names)
    return [h for h in lending_hosts if h in idle and h not in reserved], pending


@dataclass(frozen=True, slots=True)
class Acceptance:
    """The lender's verdict on a borrower's accept: ``ok`` (agree now), ``again`` (already
    agreed on these hosts: answer as before), or refused with ``code`` and ``error``;
    ``expired`` when the proposal is to be dropped."""

    ok: bool = False
    again: bool = False
    code: str = ""
    error: str = ""
    expired: bool = False


def acceptance(c: Contract, hosts: Sequence[str], now: float, offer_ttl_s: float) -> Acceptance:
    """Whether a borrower's accept of ``hosts`` on the lender's contract ``c`` holds."""
    if c.state is not ContractState.PROPOSED:
        if c.state is ContractState.AGREED and tuple(c.host_names) == tuple(hosts):
            return Acceptance(again=True)
        return Acceptance(code="not_proposed", error=f"contract {c.id} is {c.state.value}, "
                                                     "not proposed")
    if now - c.created_at > offer_ttl_s:
        return Acceptance(code="expired", error=f"offer {c.id} expired; ask again", expired=True)
    offered = {h.name for h in c.offered}
    unknown = [h for h in hosts if h not in offered]
    if unknown:
        return Acceptance(code="not_offered",
                          error=f"host(s) {', '.join(unknown)} were not offered in {c.id}")
    return Acceptance(ok=True)


def suited(needs: Requirements, hosts: Sequence[HostProperties]) -> tuple[list[int], str]:
    """Which of a lender's idle ``hosts`` meet a request's ``needs`` (their indexes, in
    order), and why the first that does not falls short ("" when all do)."""
    fit: list[int] = []
    why = ""
    for i, h in enumerate(hosts):
        short = needs.shortfall(h)
        if short is None:
            fit.append(i)
        elif not why:
            why = short.replace("required", "asked")
    return fit, why


def screen(
    policy: DomainPolicy, candidates: Sequence[Candidate], borrowed: int, now: float
) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """The offered hosts the borrowing policy accepts, and the others with the reason."""
    fitting: list[Candidate] = []
    turned: list[tuple[Candidate, str]] = []
    for c in candidates:
        verdict = policy.borrowing.accepts(c.host, c.terms, borrowed, now, policy.tz, c.peer)
        if verdict.ok:
            fitting.append(c)
        else:
            turned.append((c, verdict.reason))
    return fitting, turned


def choose(fitting: Sequence[Candidate], wanted: int,
           offers: Sequence[Hashable] = (), co_located: bool = False, *,
           waiting: Waiting | None = None) -> Choice:
    """Take the ``wanted`` best-ranked fitting hosts (ties: the order given; of a group of
    ``count`` alike, as many as still wanted); every offer in ``offers`` that gets none is
    refused, saying why.

    co_located: all hosts taken from one site (the site whose best host ranks best among
    those that can supply ``wanted``); when no site can, none is taken and every offer is
    refused (:data:`CO_LOCATED`): the borrower waits for co-located nodes. Hosts of an
    unknown site (None) count as one site.

    waiting: the borrower's waiting work by requested time (:class:`Waiting`). From a host
    whose terms cap the jobs its loan runs (``max_job_s``) no more are taken than the waiting
    jobs that fit the cap need, less the spare machines held and the hosts already taken in
    this choice (an offer that gets none for that is refused, saying so). None: caps play no
    part.
    """
    fits = {c.offer for c in fitting}
    if co_located and fitting:
        by_site: dict[str | None, list[Candidate]] = {}
        for c in fitting:
            by_site.setdefault(c.host.site, []).append(c)
        enough = [g for g in by_site.values() if sum(c.count for c in g) >= wanted]
        if not enough:
            most = max(sum(c.count for c in g) for g in by_site.values())
            why = f"{CO_LOCATED}: no site offers {wanted} (at most {most})"
            return Choice({}, {o: why for o in offers})
        fitting = min(enough, key=lambda g: min(c.rank for c in g))
    taken: dict[Hashable, list[Candidate]] = {}
    short: dict[Hashable, str] = {}
    rooms: dict[float, int] = {}
    left = wanted
    for c in sorted(fitting, key=lambda c: c.rank):
        if left <= 0:
            break
        n = min(c.count, left)
        cap = c.terms.max_job_s
        if waiting is not None and cap is not None:
            room = rooms.get(cap)
            if room is None:
                room = rooms[cap] = waiting.room(cap)
            n = min(n, room - (wanted - left))
            if n <= 0:
                short.setdefault(c.offer, f"no more waiting jobs fit its cap ({cap:g} s) "
                                          f"than we hold nodes for")
                continue
        taken.setdefault(c.offer, []).append(c if n == c.count else replace(c, count=n))
        left -= n
    refused = {o: (short[o] if o in short
                   else "other offers fit better" if o in fits
                   else "no offered host fits the borrowing policy")
               for o in offers if o not in taken}
    return Choice({k: tuple(v) for k, v in taken.items()}, refused)


# ------------------------------------------------------------------------------ adverts


@dataclass(frozen=True, slots=True)
class Advertise:
    """Offer ``count`` idle hosts to ``peer`` unasked (lender)."""

    peer: str
    count: int


def adverts(policy: DomainPolicy, intent: Intent, peers: Sequence[str], now: float, *,
            available: int, pending: int = 0) -> tuple[Advertise, ...]:
    """What a lender advertises when its lending policy says so (``lending.advertise``) and
    its interval found nodes to lend (``intent`` LEND): the idle hosts it may lend now, less
    those already offered (``pending``), to the first of ``peers`` its policy trusts. The
    caller leaves out peers with a proposal open or resting after a refusal, so the next
    advert goes to the next peer."""
    if not policy.lending.advertise or intent.action is not Action.LEND:
        return ()
    count = min(intent.nodes - pending, available)
    if count <= 0:
        return ()
    for peer in peers:
        if policy.lending.allows_peer(peer):
            return (Advertise(peer, count),)
    return ()


def take_advert(policy: DomainPolicy, state: DomainState, candidates: Sequence[Candidate],
                now: float, *, asking: bool = False, waiting: Waiting | None = None) -> Choice:
    """A borrower's answer to hosts advertised unasked: taken without asking when its own
    interval would ask for nodes now (as many as it would ask for, by :func:`screen` and
    :func:`choose`, which with ``waiting`` takes from a capped host only what fitting jobs
    need), else refused, saying why."""
    offers = list(dict.fromkeys(c.offer for c in candidates))
    if asking:
        return Choice({}, {o: "a request of ours is open" for o in offers})
    intent = policy.intent(state, now)
    if intent.action is not Action.BORROW or intent.nodes <= 0:
        return Choice({}, {o: f"no need now ({intent.action.value})" for o in offers})
    fitting, turned = screen(policy, candidates, state.borrowed, now)
    if not fitting:
        why = turned[0][1] if turned else "no host advertised"
        return Choice({}, {o: f"no advertised host fits the borrowing policy ({why})"
                           for o in offers})
    return choose(fitting, intent.nodes, offers, policy.borrowing.location.co_located,
                  waiting=waiting)


# ------------------------------------------------------------------------------ the peer's word

S = ContractState


@dataclass(frozen=True, slots=True)
class Follow:
    """Our side's answer to the peer's state of a contract: states to advance through, each
    with its reason, or end our side (``end`` says why; the peer need not be told). A
    borrower keeps new jobs off the contract's nodes (``hold`` True) while the lender drains
    it, and lets them take jobs again (``hold`` False) when the lender says it is active;
    None: as they are."""

    steps: tuple[tuple[ContractState, str], ...] = ()
    end: str = ""
    hold: bool | None = None


#: What a lender calls an active contract it drains, in its heartbeats and its answers to
#: the borrower's: not a state of the contract (it stays active), a word for the borrower.
DRAINING = "draining"


def word(state: ContractState, draining: bool) -> str:
    """The state a lender tells its borrower: ``draining`` for an active loan it drains."""
    return DRAINING if draining and state is S.ACTIVE else state.value


def follow(role: Role, ours: ContractState, theirs: str) -> Follow:
    """The lender mirrors the borrower's provisioning progress; either side ends what the
    other has already closed or failed; the borrower holds new jobs off a loan its lender
    drains (``draining``), and lets them on again once it is ``active``."""
    if role is Role.LENDER:
        if theirs == "provisioning" and ours is S.AGREED:
            return Follow(((S.PROVISIONING, "borrower provisions"),))
        if theirs == "active" and ours in (S.AGREED, S.PROVISIONING):
            steps = ((S.PROVISIONING, "borrower provisions"),) if ours is S.AGREED else ()
            return Follow(steps + ((S.ACTIVE, "borrower's nodes are up"),))
        if theirs in ("closed", "failed") and ours is not S.PROPOSED:
            return Follow(end=f"borrower's contract is {theirs}")
    elif theirs in ("closed", "failed") and ours in (S.ACTIVE, S.AGREED):
        return Follow(end=f"lender's contract is {theirs}")
    elif ours is S.ACTIVE and theirs in (DRAINING, "active"):
        return Follow(hold=theirs == DRAINING)
    return Follow()
