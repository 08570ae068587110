import pytest

from broker.policy import Action, DomainPolicy, DomainState, LendingPolicy, demand, need


def test_demand_is_sum_of_nodes_of_queue():
    assert demand([4, 1, 8]) == 13
    assert demand([]) == 0


def test_need_formula_from_paper():
    # n_a = d_a - ((|P_a| - |L_a|) + |V_a|)
    assert need(20, physical=16, lent=2, borrowed=3) == 20 - (14 + 3)
    state = DomainState(physical=16, lent=2, borrowed=3, waiting_nodes=12, running_nodes=8)
    assert state.demand == 20
    assert state.need == 3


def test_busy_full_cluster_with_short_queue_does_not_lend():
    # 10 nodes all busy, 1 job waiting: demand counts running jobs, so need > 0, not < 0
    state = DomainState(physical=10, waiting_nodes=1, running_nodes=10, busy_physical=10)
    assert state.need == 1
    assert DomainPolicy().intent(state, 0.0).action is Action.BORROW


def test_sign_of_need_chooses_action():
    policy = DomainPolicy()
    idle = DomainState(physical=10, running_nodes=2, busy_physical=2)
    assert policy.intent(idle, 0).action is Action.LEND
    assert policy.intent(idle, 0).nodes == 4  # half of 8 idle
    lender_in_need = DomainState(physical=10, lent=4, waiting_nodes=6, running_nodes=6,
                                 busy_physical=6)
    assert policy.intent(lender_in_need, 0).action is Action.RECLAIM
    assert policy.intent(lender_in_need, 0).nodes == 4  # n = 12 - 6 = 6, capped by lent
    borrower_surplus = DomainState(physical=10, borrowed=3, running_nodes=5, busy_physical=5,
                                   idle_borrowed=3)
    intent = policy.intent(borrower_surplus, 0)
    assert (intent.action, intent.nodes) == (Action.RETURN, 3)
    balanced = DomainState(physical=4, running_nodes=4, busy_physical=4)
    assert policy.intent(balanced, 0).action is Action.HOLD


@pytest.mark.parametrize(
    "kwargs",
    [dict(physical=-1), dict(physical=2, lent=2, busy_physical=1),
     dict(physical=2, borrowed=1, idle_borrowed=2), dict(physical=1.5)],
)
def test_inconsistent_state_rejected(kwargs):
    with pytest.raises(ValueError):
        DomainState(**kwargs)


def test_lending_never_exceeds_surplus():
    # 8 idle nodes but 6 nodes of jobs waiting (e.g. a wide job held back): surplus is 2
    state = DomainState(physical=10, waiting_nodes=6, running_nodes=2, busy_physical=2)
    assert state.need == -2
    assert LendingPolicy(fraction_idle=1.0).offerable(state, 0) == 2
