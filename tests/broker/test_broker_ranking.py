"""Which offered hosts a borrower takes: fitting ones, nearest first by its own RTT measurement.

The peer is a stand-in client and the RTT measurement a stand-in for ping (no packet leaves
this machine); the ranking and the agreement are the broker's own code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from broker.negotiation.messages import Accept, HostOffer, Offer, Request, Terms
from broker.service import borrowing as borrowing_module
from broker.service.client import Reply
from test_broker_addresses import FakeClient, _broker, _config


class ThreeHostClient(FakeClient):
    """Peer b offers three hosts whatever is asked; the lender's own RTT figures say far is near."""

    async def send(self, peer: Any, message: Any) -> Reply:
        self.sent.append(message)
        if isinstance(message, Request):
            hosts = (HostOffer("far", "10.207.9.1", "vplb", 2, 1024, 5, "site-b", 0.01),
                     HostOffer("near", "10.207.9.2", "vplb", 2, 1024, 5, "site-b", 9.0),
                     HostOffer("mid", "10.207.9.3", "vplb", 4, 2048, 5, "site-b", 5.0))
            offer = Offer(id="m-o1", sender="b", recipient="a", sent_at=1.0,
                          contract_id=message.contract_id, hosts=hosts, terms=Terms())
            return Reply(200, {"reply": offer.to_dict()})
        return Reply(200, {"state": "agreed"})


def test_with_more_fitting_hosts_than_needed_the_borrower_takes_the_nearest_by_its_own_rtt_stand_in_ping(
        tmp_path, monkeypatch):
    measured = {"10.207.9.1": 40.0, "10.207.9.2": 0.3, "10.207.9.3": None}  # None: no answer
    pinged: list[str] = []

    def stand_in_ping(address: str) -> float | None:
        pinged.append(address)
        return measured[address]

    monkeypatch.setattr(borrowing_module, "ping_ms", stand_in_ping)
    config = _config(tmp_path, pool=None)

    async def scenario() -> None:
        a = _broker(config, ThreeHostClient())
        [c] = await a.borrow(2, 0)
        await a.drain()
        [accept] = [m for m in a.client.sent if isinstance(m, Accept)]
        assert accept.hosts == ("near", "far")  # measured here; "mid" did not answer
        assert sorted(pinged) == sorted(measured)
        a.store.close()

    asyncio.run(scenario())


def test_with_just_enough_fitting_hosts_nothing_is_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(borrowing_module, "ping_ms", lambda address: (_ for _ in ()).throw(AssertionError(address)))
    config = _config(tmp_path, pool=None)

    async def scenario() -> None:
        a = _broker(config, ThreeHostClient())
        await a.borrow(3, 0)
        await a.drain()
        [accept] = [m for m in a.client.sent if isinstance(m, Accept)]
        assert sorted(accept.hosts) == ["far", "mid", "near"]
        a.store.close()

    asyncio.run(scenario())


class SilentScheduler:
    """A scheduler whose controller does not answer (slurmctld down or still starting)."""

    def __init__(self) -> None:
        self.calls = 0

    def snapshot(self) -> Any:
        from broker.scheduler import SchedulerError

        self.calls += 1
        raise SchedulerError("squeue: fatal: Could not establish a configuration source")


def test_a_broker_whose_scheduler_does_not_answer_waits_instead_of_exiting_stand_in_scheduler(tmp_path, caplog):
    import logging

    from broker.service.broker import Broker
    from broker.service.runtime import serve
    from broker.service.store import Store
    from test_broker_addresses import FakeExecutor

    caplog.set_level(logging.WARNING, logger="broker")
    config = _config(tmp_path, pool=None)
    scheduler = SilentScheduler()

    async def scenario() -> None:
        b = Broker(config, Store(config.db_path), scheduler, FakeExecutor(), FakeClient())  # type: ignore[arg-type]
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(2.5 * config.interval_s, stop.set)
        await asyncio.wait_for(serve(b, stop, None), timeout=10 * config.interval_s)
        b.store.close()

    config = type(config)(**{**config.__dict__, "interval_s": 0.2})
    asyncio.run(scenario())
    assert scheduler.calls >= 2, "it tries again each interval"
    assert "cannot reconcile yet, the scheduler does not answer" in caplog.text
