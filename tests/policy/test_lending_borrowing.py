from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from broker.policy import (
    BorrowingPolicy,
    DomainState,
    HostProperties,
    LendingPolicy,
    Mode,
    Requirements,
    Terms,
    parse_window,
)

IDLE10 = DomainState(physical=12, running_nodes=2, busy_physical=2)  # 10 idle, need -10


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_lend_half_of_idle_by_default():
    assert LendingPolicy().offerable(IDLE10, 0) == 5


def test_min_reserve_max_lent_and_peers():
    assert LendingPolicy(fraction_idle=1.0, min_reserve=3).offerable(IDLE10, 0) == 7
    lent = DomainState(physical=12, lent=2, running_nodes=2, busy_physical=2)
    assert LendingPolicy(fraction_idle=1.0, max_lent=5).offerable(lent, 0) == 3
    allow = LendingPolicy(peers=frozenset({"osc"}))
    assert allow.offerable(IDLE10, 0, peer="osc") == 5
    assert allow.offerable(IDLE10, 0, peer="ctc") == 0
    assert LendingPolicy(enabled=False).offerable(IDLE10, 0) == 0


def test_no_lending_while_borrowing():
    state = DomainState(physical=12, borrowed=1, running_nodes=2, busy_physical=2)
    assert LendingPolicy().offerable(state, 0) == 0


def test_lending_window_by_night():
    policy = LendingPolicy(windows=(parse_window("19:00-07:00"),))
    assert policy.offerable(IDLE10, ts("2026-11-25T23:30:00")) == 5
    assert policy.offerable(IDLE10, ts("2026-11-26T06:59:00")) == 5
    assert policy.offerable(IDLE10, ts("2026-11-25T12:00:00")) == 0


def test_window_days_and_timezone():
    w = parse_window("08:00-18:00 mon-fri")
    wed_noon = datetime(2026, 11, 25, 12, 0)
    sat_noon = datetime(2026, 11, 28, 12, 0)
    assert w.contains(wed_noon) and not w.contains(sat_noon)
    policy = BorrowingPolicy(windows=(w,))
    need = DomainState(physical=4, waiting_nodes=3, running_nodes=4, busy_physical=4)
    # 14:00 UTC Wednesday is 09:00 in New York: inside; 03:00 UTC is 22:00: outside
    ny = ZoneInfo("America/New_York")
    assert policy.wanted(need, ts("2026-11-25T14:00:00"), ny) == 3
    assert policy.wanted(need, ts("2026-11-25T03:00:00"), ny) == 0


@pytest.mark.parametrize("text", ["8-18", "08:00-25:00", "08:00-18:00 someday", "x"])
def test_bad_window_text(text):
    with pytest.raises(ValueError, match="expected|unknown day|range"):
        parse_window(text)


def test_borrow_caps_and_return():
    need = DomainState(physical=4, borrowed=2, waiting_nodes=10, running_nodes=4,
                       busy_physical=4)
    assert need.need == 8
    assert BorrowingPolicy().wanted(need, 0) == 8
    assert BorrowingPolicy(max_borrowed=5).wanted(need, 0) == 3
    assert BorrowingPolicy(enabled=False).wanted(need, 0) == 0
    surplus = DomainState(physical=4, borrowed=4, running_nodes=3, busy_physical=2,
                          idle_borrowed=3)
    assert surplus.need == -5
    assert BorrowingPolicy().to_return(surplus) == 3


def test_accepts_checks_host_terms_and_cap():
    policy = BorrowingPolicy(
        max_borrowed=2,
        require=Requirements(cpus=2, memory_mb=1024, disk_gb=5),
        accept_reclamation=frozenset({Mode.LEASE, Mode.DRAIN}),
        min_lease_s=1800,
    )
    big = HostProperties(cpus=4, memory_mb=4096, disk_gb=20)
    assert policy.accepts(big, Terms(Mode.DRAIN), borrowed=0, now=0)
    assert not policy.accepts(big, Terms(Mode.DRAIN), borrowed=2, now=0)
    small = HostProperties(cpus=4, memory_mb=512, disk_gb=20)
    verdict = policy.accepts(small, Terms(Mode.DRAIN), borrowed=0, now=0)
    assert not verdict and "memory_mb" in verdict.reason
    verdict = policy.accepts(big, Terms(Mode.IMMEDIATE), borrowed=0, now=0)
    assert not verdict and "immediate" in verdict.reason
    assert not policy.accepts(big, Terms(Mode.LEASE, lease_s=600), borrowed=0, now=0)
    assert policy.accepts(big, Terms(Mode.LEASE, lease_s=3600), borrowed=0, now=0)
