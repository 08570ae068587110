from broker.policy import Loan, Mode, ReclamationPolicy, Terms

LOANS = [
    Loan("a", "osc", started=0, busy_since=100),  # job running longest
    Loan("b", "osc", started=0, busy_since=None),  # idle
    Loan("c", "osc", started=0, busy_since=900),  # job started late: least work lost
    Loan("d", "osc", started=500, busy_since=None),  # idle
]


def test_immediate_takes_idle_first_then_least_work_lost():
    plan = ReclamationPolicy(Terms(Mode.IMMEDIATE)).plan(LOANS, 3, now=1000)
    assert set(plan.now[:2]) == {"b", "d"}
    assert plan.now[2] == "c"
    assert plan.drain == ()


def test_gradual_caps_per_call():
    plan = ReclamationPolicy(Terms(Mode.GRADUAL, per_interval=2)).plan(LOANS, 4, now=1000)
    assert len(plan) == 2


def test_drain_returns_idle_now_and_drains_busy():
    plan = ReclamationPolicy(Terms(Mode.DRAIN)).plan(LOANS, 4, now=1000)
    assert set(plan.now) == {"b", "d"}
    assert set(plan.drain) == {"a", "c"}


def test_lease_never_early_but_expires():
    policy = ReclamationPolicy(Terms(Mode.LEASE, lease_s=1000))
    assert len(policy.plan(LOANS, 4, now=999)) == 0
    assert policy.expired(LOANS, now=999) == ()
    assert set(policy.expired(LOANS, now=1000)) == {"a", "b", "c"}
    assert ReclamationPolicy(Terms(Mode.IMMEDIATE)).expired(LOANS, now=10**9) == ()


def test_nothing_wanted_nothing_taken():
    assert len(ReclamationPolicy().plan(LOANS, 0, now=0)) == 0
    assert len(ReclamationPolicy().plan([], 3, now=0)) == 0
