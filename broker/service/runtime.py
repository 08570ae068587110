"""Build a broker from its config, and run it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from broker.provisioning import Executor
from broker.scheduler import make_adapter
from broker.service.broker import Broker, serve
from broker.service.client import PeerClient
from broker.service.config import BrokerConfig
from broker.service.metrics import Metrics
from broker.service.probes import CommandProbe
from broker.service.store import Store
from broker.service.tls import client_context, server_context

log = logging.getLogger("broker")


def build(config: BrokerConfig) -> Broker:
    config.tls.check(config.source)
    ex = config.executor
    return Broker(
        config=config,
        store=Store(config.db_path),
        scheduler=make_adapter(config.scheduler, f"{config.source}: scheduler"),
        executor=Executor(
            ex.playbook_dir, config.state_dir / "runner", ex.borrow_playbook,
            ex.reclaim_playbook, ex.inventory, ex.extravars, ex.timeout_s,
        ),
        client=PeerClient(client_context(config.tls, config.source), config.request_timeout_s),
        vm_probe=CommandProbe("vms", config.vm_probe),
        switch_probe=CommandProbe("switch", config.switch_probe),
        metrics=Metrics(config.domain),
    )


def run(config: BrokerConfig) -> int:
    """The ``viocluster broker run`` service loop."""
    broker = build(config)
    server_ssl = server_context(config.tls, config.source)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(broker, stop, server_ssl)
        await broker.drain()

    try:
        asyncio.run(main())
    finally:
        broker.store.close()
    return 0
