"""The trade core's decisions, as plain function calls: observations in, effects out."""

from dataclasses import replace

from broker.negotiation import trade
from broker.negotiation.contracts import Contract, ContractState, Role
from broker.negotiation.messages import HostOffer, Needs
from broker.negotiation.messages import Terms as WireTerms
from broker.negotiation.trade import Ask, Candidate, Drain, GiveBack, Holding, TakeBack
from broker.policy import (
    BorrowingPolicy,
    DomainPolicy,
    DomainState,
    HostProperties,
    LendingPolicy,
    Loan,
    Mode,
    ReclamationPolicy,
    Requirements,
    Terms,
)


def policy(mode: Mode = Mode.IMMEDIATE, **kw) -> DomainPolicy:
    terms = Terms(mode, kw.pop("lease_s", 3600.0), kw.pop("per_interval", 1))
    return DomainPolicy(reclamation=ReclamationPolicy(terms), **kw)


# A lender of 4 nodes that lent 2 and whose own queue now wants 4: n_a = 4 - (2 + 0) = 2.
NEEDS_BACK = DomainState(physical=4, lent=2, waiting_nodes=2, running_nodes=2, busy_physical=2)
BUSY = Loan("busy", "b", started=0, busy_since=50)
IDLE = Loan("idle", "b", started=0, busy_since=None)


def test_immediate_takes_back_idle_and_busy_loans_at_once():
    r = trade.interval(policy(Mode.IMMEDIATE), NEEDS_BACK, 100, lent=[BUSY, IDLE])
    assert r.intent.action.value == "reclaim"
    assert {e.loan for e in r.effects} == {"busy", "idle"}
    assert all(isinstance(e, TakeBack) for e in r.effects)


def test_drain_preempts_nothing_busy_loans_drain():
    r = trade.interval(policy(Mode.DRAIN), NEEDS_BACK, 100, lent=[BUSY, IDLE])
    assert TakeBack("idle", "own demand needs 2 node(s)") in r.effects
    assert Drain("busy", "own demand needs 2 node(s)") in r.effects
    assert not any(isinstance(e, TakeBack) and e.loan == "busy" for e in r.effects)


def test_a_draining_loan_comes_back_once_its_job_has_ended():
    still = trade.interval(policy(Mode.DRAIN), NEEDS_BACK, 200, draining=[BUSY])
    assert not any(getattr(e, "loan", None) == "busy" for e in still.effects)
    done = Loan("busy", "b", started=0, busy_since=None)
    ended = trade.interval(policy(Mode.DRAIN), NEEDS_BACK, 300, draining=[done])
    assert ended.effects[0] == TakeBack("busy", trade.DRAINED)


def test_gradual_takes_per_interval_at_most():
    r = trade.interval(policy(Mode.GRADUAL, per_interval=1), NEEDS_BACK, 100, lent=[BUSY, IDLE])
    assert r.effects == (TakeBack("idle", "own demand needs 2 node(s)"),)


def test_lease_takes_nothing_early_and_everything_at_its_end():
    p = policy(Mode.LEASE, lease_s=1000)
    assert trade.interval(p, NEEDS_BACK, 999, lent=[BUSY, IDLE]).effects == ()
    r = trade.interval(p, NEEDS_BACK, 1000, lent=[BUSY, IDLE])
    assert set(r.effects) == {TakeBack("busy", trade.LEASE_ENDED),
                              TakeBack("idle", trade.LEASE_ENDED)}


def test_an_ended_lease_is_not_also_planned_for_reclaim():
    p = policy(Mode.LEASE, lease_s=10)
    late = Loan("late", "b", started=500)
    r = trade.interval(p, NEEDS_BACK, 100, lent=[IDLE, late])
    assert r.effects == (TakeBack("idle", trade.LEASE_ENDED),)


def test_a_domain_short_of_nodes_asks_unless_a_request_is_open():
    short = DomainState(physical=2, waiting_nodes=3, running_nodes=2, busy_physical=2)
    assert trade.interval(policy(), short, 0).effects == (Ask(3),)
    assert trade.interval(policy(), short, 0, asking=True).effects == ()
    capped = policy(borrowing=BorrowingPolicy(max_borrowed=1))
    assert trade.interval(capped, short, 0).effects == (Ask(1),)


def test_returns_only_idle_holdings_that_fit_the_surplus():
    # 4 own nodes, 3 borrowed (2 idle), queue wants 4: n_a = 4 - (4 + 3) = -3, idle 2
    state = DomainState(physical=4, borrowed=3, running_nodes=4, busy_physical=3,
                        idle_borrowed=2)
    held = [Holding("c1", nodes=1, idle=False), Holding("c2", nodes=3, idle=True),
            Holding("c3", nodes=1, idle=True), Holding("c4", nodes=1, idle=True)]
    r = trade.interval(policy(), state, 0, held=held)
    assert r.intent.action.value == "return" and r.intent.nodes == 2
    assert r.effects == (GiveBack("c3", trade.SUFFICE), GiveBack("c4", trade.SUFFICE))


def test_nothing_to_do_is_no_effect():
    calm = DomainState(physical=4, running_nodes=4, busy_physical=4)
    r = trade.interval(policy(), calm, 0)
    assert r.intent.action.value == "hold" and r.effects == ()


# -- a lender's answer -------------------------------------------------------------------
IDLE_LENDER = DomainState(physical=8)  # n_a = -8, 8 idle: lends up to half


def test_answer_offers_half_the_idle_nodes_within_what_was_asked_and_is_free():
    assert trade.answer(policy(), IDLE_LENDER, "a", 10, 0, available=8).count == 4
    assert trade.answer(policy(), IDLE_LENDER, "a", 2, 0, available=8).count == 2
    assert trade.answer(policy(), IDLE_LENDER, "a", 10, 0, available=3).count == 3
    assert trade.answer(policy(), IDLE_LENDER, "a", 10, 0, available=8, pending=3).count == 1


def test_answer_declines_saying_why():
    only_b = policy(lending=LendingPolicy(peers=frozenset({"b"})))
    assert trade.answer(only_b, IDLE_LENDER, "a", 1, 0, available=8).reason == \
        "lending policy: peer not allowed"
    busy = DomainState(physical=8, running_nodes=8, busy_physical=8)
    assert trade.answer(policy(), busy, "a", 1, 0, available=8) == \
        trade.Answer(0, "lending policy offers 0 now")
    assert trade.answer(policy(), IDLE_LENDER, "a", 1, 0, available=0) == \
        trade.Answer(0, "no idle lending host")


# -- a borrower's choice -------------------------------------------------------------------
def cand(offer, cpus, rank, mode=Mode.IMMEDIATE):
    return Candidate(offer, HostProperties(cpus=cpus, memory_mb=1024, disk_gb=10),
                     Terms(mode), (rank,))


def test_screen_turns_away_hosts_the_policy_refuses_with_the_reason():
    p = policy(borrowing=BorrowingPolicy(require=Requirements(cpus=2),
                                         accept_reclamation=frozenset({Mode.IMMEDIATE})))
    small, drained, good = cand("x", 1, 0), cand("x", 4, 1, Mode.DRAIN), cand("y", 4, 2)
    fitting, turned = trade.screen(p, [small, drained, good], borrowed=0, now=0)
    assert fitting == [good]
    assert dict(turned) == {small: "cpus 1 < required 2",
                            drained: "reclamation drain not accepted (immediate)"}


def test_choose_takes_the_best_ranked_and_says_why_the_rest_are_refused():
    near, far, farther = cand("x", 1, 1.0), cand("y", 1, 5.0), cand("y", 1, 9.0)
    choice = trade.choose([far, farther, near], wanted=2, offers=["x", "y", "z"])
    assert choice.taken == {"x": (near,), "y": (far,)}
    assert choice.refused == {"z": "no offered host fits the borrowing policy"}
    choice = trade.choose([far, near], wanted=1, offers=["x", "y"])
    assert choice.refused == {"y": "other offers fit better"}


def test_a_candidate_may_stand_for_several_alike_hosts():
    three, two = (Candidate("x", HostProperties(), Terms(), (0,), count=3),
                  Candidate("y", HostProperties(), Terms(), (1,), count=2))
    choice = trade.choose([two, three], wanted=4)
    assert choice.taken == {"x": (three,), "y": (Candidate("y", HostProperties(), Terms(), (1,),
                                                           count=1),)}


def test_a_peer_that_declined_rests_three_intervals_at_least_five_seconds():
    assert trade.rest_after_decline(10) == 30 and trade.rest_after_decline(0.5) == 5.0


def test_the_lender_follows_the_borrowers_progress_and_either_side_ends_what_the_other_ended():
    from broker.negotiation.contracts import ContractState as S
    from broker.negotiation.contracts import Role

    lender, borrower = Role.LENDER, Role.BORROWER
    assert trade.follow(lender, S.AGREED, "provisioning").steps == (
        (S.PROVISIONING, "borrower provisions"),)
    assert [to for to, _ in trade.follow(lender, S.AGREED, "active").steps] == [
        S.PROVISIONING, S.ACTIVE]
    assert [to for to, _ in trade.follow(lender, S.PROVISIONING, "active").steps] == [S.ACTIVE]
    assert trade.follow(lender, S.ACTIVE, "failed").end == "borrower's contract is failed"
    assert trade.follow(lender, S.PROPOSED, "closed") == trade.Follow()
    assert trade.follow(borrower, S.ACTIVE, "closed").end == "lender's contract is closed"
    assert trade.follow(borrower, S.PROVISIONING, "closed") == trade.Follow()
    assert trade.follow(borrower, S.ACTIVE, "active") == trade.Follow(hold=False)


def test_drain_deadline_takes_a_loan_still_busy_back_at_its_deadline():
    p = DomainPolicy(reclamation=ReclamationPolicy(Terms(Mode.DRAIN, drain_deadline_s=600)))
    draining = Loan("busy", "b", started=0, busy_since=50, draining_since=100)
    before = trade.interval(p, NEEDS_BACK, 699, draining=[draining])
    assert not any(getattr(e, "loan", None) == "busy" for e in before.effects)
    at = trade.interval(p, NEEDS_BACK, 700, draining=[draining])
    assert at.effects[0] == TakeBack("busy", trade.DRAIN_DEADLINE)
    # a loan whose job ended comes back as drained, not as overdue
    done = Loan("busy", "b", started=0, busy_since=None, draining_since=100)
    assert trade.interval(p, NEEDS_BACK, 900, draining=[done]).effects[0] == \
        TakeBack("busy", trade.DRAINED)


def test_without_a_drain_deadline_a_busy_loan_drains_however_long():
    p = policy(Mode.DRAIN)
    draining = Loan("busy", "b", started=0, busy_since=50, draining_since=100)
    r = trade.interval(p, NEEDS_BACK, 10**9, draining=[draining])
    assert not any(getattr(e, "loan", None) == "busy" for e in r.effects)


def test_drain_deadline_is_only_a_drain_term():
    p = DomainPolicy(reclamation=ReclamationPolicy(Terms(Mode.IMMEDIATE, drain_deadline_s=0)))
    loan = Loan("x", "b", started=0, busy_since=1, draining_since=1)
    assert p.reclamation.overdue([loan], 10) == ()


def test_the_borrower_holds_jobs_off_a_loan_its_lender_drains():
    from broker.negotiation.contracts import ContractState as CS, Role
    assert trade.follow(Role.BORROWER, CS.ACTIVE, trade.DRAINING) == trade.Follow(hold=True)
    assert trade.follow(Role.BORROWER, CS.ACTIVE, "active") == trade.Follow(hold=False)
    assert trade.follow(Role.BORROWER, CS.RECLAIMING, trade.DRAINING) == trade.Follow()
    # the lender calls an active loan it drains "draining", any other by its state
    assert trade.word(CS.ACTIVE, draining=True) == "draining"
    assert trade.word(CS.RECLAIMING, draining=True) == "reclaiming"
    assert trade.word(CS.ACTIVE, draining=False) == "active"


# -- location, needs, disk -------------------------------------------------------------------
from broker.policy import Location  # noqa: E402


def at(offer, rtt, site, rank=None, peer=None, count=1):
    return Candidate(offer, HostProperties(1, 1024, 10, rtt, site), Terms(),
                     (rtt if rank is None else rank,), peer=peer, count=count)


def test_screen_turns_away_hosts_too_far_or_at_a_site_not_accepted():
    rule = Location(max_rtt_ms=5, sites=frozenset({"s1", "s2"}),
                    lenders=(("far", Location(max_rtt_ms=50)),))
    p = policy(borrowing=BorrowingPolicy(location=rule))
    near, slow, odd = at("x", 1.0, "s1"), at("x", 9.0, "s1"), at("x", 1.0, "s9")
    unknown_rtt = at("x", float("inf"), "s1")  # its lender could not measure it
    far_ok = at("y", 40.0, "s9", peer="far")  # the rule for lender "far": 50 ms, any site
    fitting, turned = trade.screen(p, [near, slow, odd, unknown_rtt, far_ok], 0, 0)
    assert fitting == [near, far_ok]
    assert dict(turned) == {slow: "RTT 9 ms > max 5 ms",
                            odd: "site s9 not accepted (s1, s2)",
                            unknown_rtt: "RTT unknown > max 5 ms"}


def test_a_location_rule_does_not_judge_what_is_not_known():
    # the simulator knows no RTT or site: its hosts carry None, and pass
    p = policy(borrowing=BorrowingPolicy(location=Location(max_rtt_ms=1, sites=frozenset())))
    c = Candidate("x", HostProperties(), Terms(), (0,))
    assert trade.screen(p, [c], 0, 0) == ([c], [])


def test_co_located_takes_hosts_of_one_site_or_waits():
    a1, a2, b1 = at("x", 1.0, "a"), at("y", 2.0, "a"), at("z", 0.5, "b")
    # without the rule: the best-ranked two, over two sites
    assert set(trade.choose([a1, a2, b1], 2).taken) == {"x", "z"}
    # with it: site a, the only one that can supply two
    choice = trade.choose([a1, a2, b1], 2, offers=["x", "y", "z"], co_located=True)
    assert choice.taken == {"x": (a1,), "y": (a2,)}
    assert choice.refused == {"z": "other offers fit better"}
    # no site has three: take nothing, wait
    wait = trade.choose([a1, a2, b1], 3, offers=["x", "y", "z"], co_located=True)
    assert wait.taken == {}
    assert set(wait.refused.values()) == {f"{trade.CO_LOCATED}: no site offers 3 (at most 2)"}
    # a group of alike hosts counts as many
    three = at("w", 9.0, "c", count=3)
    assert trade.choose([a1, b1, three], 3, co_located=True).taken == {"w": (three,)}


def test_the_lender_offers_only_hosts_that_meet_the_requests_needs():
    hosts = [HostProperties(2, 4096, 50), HostProperties(8, 512, 50), HostProperties(8, 8192, 5)]
    assert trade.suited(Requirements(1, 0, 0), hosts) == ([0, 1, 2], "")
    assert trade.suited(Requirements(4, 1024, 10), hosts) == ([], "cpus 2 < asked 4")
    fit, why = trade.suited(Requirements(2, 2048, 10), hosts)
    assert (fit, why) == ([0], "memory_mb 512 < asked 2048")
    assert trade.answer(policy(), IDLE_LENDER, "a", 4, 0, available=len(fit), unfit=why).count == 1
    assert trade.answer(policy(), IDLE_LENDER, "a", 4, 0, available=0,
                        unfit="cpus 2 < asked 4").reason == \
        "no idle lending host meets the request's needs (cpus 2 < asked 4)"


def test_a_loan_whose_host_runs_short_of_disk_is_taken_back():
    p = policy(lending=LendingPolicy(min_free_disk_gb=5))
    calm = DomainState(physical=4, lent=2, running_nodes=2, busy_physical=2)
    ok = Loan("ok", "a", 0, free_disk_gb=5)
    short = Loan("short", "a", 0, busy_since=10, free_disk_gb=4)
    unmeasured = Loan("unmeasured", "a", 0)
    r = trade.interval(p, calm, 100, lent=[ok, short, unmeasured])
    assert r.effects == (TakeBack("short", "free disk 4 GB < 5 GB"),)
    draining = Loan("d", "a", 0, busy_since=10, draining_since=50, free_disk_gb=1)
    assert trade.endings(p, [], [draining], 100) == (TakeBack("d", "free disk 1 GB < 5 GB"),)
    # not watched without a threshold
    assert trade.interval(policy(), calm, 100, lent=[short]).effects == ()


# -- adverts -------------------------------------------------------------------------------
def test_a_lender_advertises_only_when_its_policy_says_so_to_a_trusted_peer():
    from broker.policy import Intent, Action
    lend = Intent(Action.LEND, 4)
    quiet = policy()
    assert trade.adverts(quiet, lend, ["a"], 0, available=8) == ()
    loud = policy(lending=LendingPolicy(advertise=True, peers=frozenset({"c"})))
    assert trade.adverts(loud, lend, ["a", "c"], 0, available=8) == (trade.Advertise("c", 4),)
    assert trade.adverts(loud, lend, ["a", "c"], 0, available=2) == (trade.Advertise("c", 2),)
    assert trade.adverts(loud, lend, ["a", "c"], 0, available=8, pending=4) == ()
    assert trade.adverts(loud, lend, ["a"], 0, available=8) == ()  # "a" is not trusted
    assert trade.adverts(loud, Intent(Action.HOLD), ["c"], 0, available=8) == ()


def test_a_borrower_takes_an_advert_only_when_it_would_ask_now():
    short = DomainState(physical=2, waiting_nodes=3, running_nodes=2, busy_physical=2)
    three = Candidate("ad", HostProperties(), Terms(), (0,), count=5)
    taken = trade.take_advert(policy(), short, [three], 0)
    assert taken.taken == {"ad": (Candidate("ad", HostProperties(), Terms(), (0,), count=3),)}
    assert trade.take_advert(policy(), short, [three], 0, asking=True).refused == \
        {"ad": "a request of ours is open"}
    calm = DomainState(physical=4, running_nodes=4, busy_physical=4)
    assert trade.take_advert(policy(), calm, [three], 0).refused == {"ad": "no need now (hold)"}
    picky = policy(borrowing=BorrowingPolicy(require=Requirements(cpus=4)))
    assert trade.take_advert(picky, short, [three], 0).refused == \
        {"ad": "no advertised host fits the borrowing policy (cpus 1 < required 4)"}


# ------------------------------------------------------------------ the lender's books

def _contract(cid: str, state: str, offered=(), hosts=(), created_at: float = 0.0):
    c, _t = Contract.propose(cid, Role.LENDER, "b", "a", len(offered) or 1, Needs(), WireTerms(),
                             created_at)
    offers = tuple(HostOffer(name=h, address=h, account="vcpeerb", cpus=1, memory_mb=512, site="s",
                             disk_gb=1) for h in offered)
    c = replace(c, offered=offers)
    if state != "proposed":
        c, _t = c.advance(ContractState.AGREED, created_at, "accepted",
                          nodes=tuple((h, f"b-v{cid}-{i}") for i, h in enumerate(hosts)))
        if state == "active":
            c, _t = c.advance(ContractState.PROVISIONING, created_at, "borrow.yml")
            c, _t = c.advance(ContractState.ACTIVE, created_at, "joined")
    return c


def test_lendable_leaves_out_offered_and_lent_hosts_and_counts_what_proposals_offer():
    open_loans = [_contract("p", "proposed", offered=("h1", "h2")),
                  _contract("l", "active", offered=("h3",), hosts=("h3",))]
    free, pending = trade.lendable(open_loans, ["h1", "h2", "h3", "h4", "h5"], {"h1", "h3", "h4"})
    assert (free, pending) == (["h4"], 2)  # h5 is busy; h1 offered, h3 lent
    assert trade.lendable([], ["h1"], set()) == ([], 0)


def test_an_accept_holds_only_for_offered_hosts_of_a_live_proposal():
    c = _contract("p", "proposed", offered=("h1", "h2"), created_at=100.0)
    assert trade.acceptance(c, ["h2"], 110.0, offer_ttl_s=60).ok
    late = trade.acceptance(c, ["h2"], 200.0, offer_ttl_s=60)
    assert (late.ok, late.expired, late.code) == (False, True, "expired")
    wrong = trade.acceptance(c, ["h9"], 110.0, offer_ttl_s=60)
    assert (wrong.ok, wrong.code) == (False, "not_offered") and "h9" in wrong.error
    agreed = _contract("q", "agreed", offered=("h1",), hosts=("h1",))
    assert trade.acceptance(agreed, ["h1"], 0.0, 60).again  # the same accept again: same answer
    other = trade.acceptance(agreed, ["h2"], 0.0, 60)
    assert (other.ok, other.again, other.code) == (False, False, "not_proposed")


# ------------------------------------------------- a lender's cap on the borrower's jobs

def waiting(jobs, spare=0):
    """The borrower's waiting jobs as (nodes, requested seconds), seen by the trade core."""
    return trade.Waiting(lambda cap: sum(n for n, req in jobs if req <= cap), spare)


def capped_offer(offer, count, cap, rank=0):
    return Candidate(offer, HostProperties(), Terms(Mode.DRAIN, max_job_s=cap), (rank,),
                     count=count)


def test_waiting_counts_the_nodes_of_jobs_within_a_cap_less_the_spare_ones():
    w = waiting([(2, 1800), (3, 3600), (4, 7200)], spare=1)
    assert w.within(3600) == 5 and w.room(3600) == 4 and w.room(600) == -1


def test_from_a_capped_offer_the_borrower_takes_only_what_its_fitting_jobs_need():
    # wants 8 (its need counts every job), but only 2 + 3 nodes of jobs fit the 1-h cap
    w = waiting([(2, 1800), (3, 3600), (4, 7200)])
    choice = trade.choose([capped_offer("a", 8, 3600)], wanted=8, waiting=w)
    assert choice.taken == {"a": (capped_offer("a", 5, 3600),)}
    # less the machines it holds idle or booting
    w = waiting([(2, 1800), (3, 3600), (4, 7200)], spare=4)
    assert trade.choose([capped_offer("a", 8, 3600)], 8, waiting=w).taken == \
        {"a": (capped_offer("a", 1, 3600),)}


def test_a_capped_offer_no_waiting_job_fits_is_refused_saying_so():
    w = waiting([(4, 7200)])
    choice = trade.choose([capped_offer("a", 4, 3600)], wanted=4, offers=["a"], waiting=w)
    assert choice.taken == {}
    assert choice.refused["a"].startswith("no more waiting jobs fit its cap (3600 s)")


def test_hosts_taken_before_count_against_a_capped_offer_and_uncapped_ones_are_not_limited():
    # an uncapped offer ranks first and takes 3 of the 5 fitting nodes' worth; the capped one
    # then gets 2; the long job's 4 nodes come only from the uncapped offer
    free = Candidate("free", HostProperties(), Terms(), (0,), count=3)
    w = waiting([(2, 1800), (3, 3600), (4, 7200)])
    choice = trade.choose([capped_offer("a", 8, 3600, rank=1), free], wanted=9, waiting=w)
    assert choice.taken == {"free": (free,), "a": (capped_offer("a", 2, 3600, rank=1),)}


def test_without_the_observation_caps_play_no_part_in_the_choice():
    choice = trade.choose([capped_offer("a", 8, 3600)], wanted=8)
    assert choice.taken == {"a": (capped_offer("a", 8, 3600),)}


def test_an_advert_under_a_cap_is_taken_as_far_as_fitting_jobs_need():
    short = DomainState(physical=2, waiting_nodes=6, running_nodes=2, busy_physical=2)
    w = waiting([(2, 600), (4, 86400)])
    taken = trade.take_advert(policy(), short, [capped_offer("ad", 6, 3600)], 0, waiting=w)
    assert taken.taken == {"ad": (capped_offer("ad", 2, 3600),)}


def test_an_idle_holding_whose_cap_no_waiting_job_fits_is_given_back_whatever_the_intent():
    # short of nodes (asks), holds an idle 1-h VM that none of its (long) waiting jobs fits
    short = DomainState(physical=2, borrowed=2, waiting_nodes=6, running_nodes=3,
                        busy_physical=2, idle_borrowed=1)
    held = [Holding("v1", cap=3600), Holding("v2", idle=False, cap=3600)]
    r = trade.interval(policy(), short, 0, held=held, waiting=waiting([(6, 7200)]))
    assert r.effects == (GiveBack("v1", f"{trade.UNFIT} (3600 s)"), Ask(5))
    # a job that fits keeps it; without the observation nothing changes
    r = trade.interval(policy(), short, 0, held=held, waiting=waiting([(6, 7200), (1, 60)]))
    assert r.effects == (Ask(5),)
    assert trade.interval(policy(), short, 0, held=held).effects == (Ask(5),)
    # an uncapped holding is never given back for it
    r = trade.interval(policy(), short, 0, held=[Holding("v3")], waiting=waiting([(6, 7200)]))
    assert r.effects == (Ask(5),)


def test_unfit_holdings_count_towards_a_return():
    # n_a = 4 - (4 + 3) = -3 with 2 idle: returns 2, the unfit one first
    state = DomainState(physical=4, borrowed=3, running_nodes=4, busy_physical=3,
                        idle_borrowed=2)
    held = [Holding("c1", idle=False), Holding("c2"), Holding("c3", cap=1800)]
    r = trade.interval(policy(), state, 0, held=held, waiting=waiting([(1, 3600)]))
    assert r.intent.nodes == 2
    assert r.effects == (GiveBack("c3", f"{trade.UNFIT} (1800 s)"),
                         GiveBack("c2", trade.SUFFICE))
