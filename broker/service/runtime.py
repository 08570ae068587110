"""Build a broker from its config, and run it until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.provisioning import Executor
from broker.scheduler import SchedulerError, make_adapter
from broker.service.api import peer_app, status_app
from broker.service.broker import Broker
from broker.service.client import PeerClient
from broker.errors import UserError
from broker.service.config import BrokerConfig, load_config
from broker.service.metrics import Metrics
from broker.service.probes import CommandProbe
from broker.service.store import Store
from broker.service.tls import client_context, fingerprint_pem, load_into, server_context

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


def reload_tls(broker: Broker, server_ssl: ssl.SSLContext) -> bool:
    """SIGHUP: read the config again and take its TLS files, CAs and pins, without a restart.

    Connections and contracts stay; new handshakes use the new certificate, and each peer is
    checked against its new pins. Everything is checked before anything changes: on a
    mistake the broker logs it and keeps what it had. Only ``tls`` and the peers' ``url``,
    ``fingerprint`` and ``ca`` are taken; other changes (a peer added or removed included)
    need a restart. A CA loaded once stays a trust anchor until the restart (pins still decide).
    """
    old = broker.config
    try:
        new = load_config(Path(old.source))
        new.tls.check(new.source)
        server_context(new.tls, new.source)  # both load, or nothing is touched
        client_context(new.tls, new.source)
        if new.domain != old.domain:
            raise UserError(f"{new.source}: domain is {new.domain!r}, the running broker is "
                            f"{old.domain!r}; restart to change it")
    except UserError as exc:
        log.error("reload refused, the running certificate and pins stay: %s", exc)
        return False
    if set(new.peers) != set(old.peers):
        log.warning("reload: peers added or removed (%s -> %s) take effect at the next restart",
                    ",".join(sorted(old.peers)), ",".join(sorted(new.peers)))
    peers = {name: new.peers.get(name, peer) for name, peer in old.peers.items()}
    load_into(server_ssl, new.tls, new.source)
    load_into(broker.client.ssl_context, new.tls, new.source)
    broker.config = dataclasses.replace(old, tls=new.tls, peers=peers,
                                        cert_warn_days=new.cert_warn_days)
    broker.client.renew()
    broker.certs.load(broker.config)
    broker.certs.check()
    log.info("reloaded TLS: certificate %s; pins %s",
             fingerprint_pem(new.tls.cert.read_bytes()),
             "; ".join(f"{p.name}={','.join(p.pins)}" for p in peers.values()))
    return True


def run(config: BrokerConfig) -> int:
    """The ``viocluster broker run`` service loop."""
    broker = build(config)
    server_ssl = server_context(config.tls, config.source)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_tls, broker, server_ssl)
        await serve(broker, stop, server_ssl)
        await broker.drain()

    try:
        asyncio.run(main())
    finally:
        broker.store.close()
    return 0


async def serve(broker: Broker, stop: asyncio.Event, server_ssl: Any) -> None:
    """Reconcile, open the API and the status listener, run the interval until ``stop``."""
    if broker.policy.reclamation.terms.max_job_s is not None:
        log.warning("reclamation.max_job_s (%g s) is not sent to borrowers by this broker: the "
                    "simulator honours it; on live clusters the borrowers enforce it with their "
                    "borrowed partition's MaxTime", broker.policy.reclamation.terms.max_job_s)
    # Reconciliation needs the scheduler: while it does not answer (slurmctld starting, down),
    # say so and try again each interval instead of exiting into a restart loop.
    while True:
        try:
            await broker.reconcile(starting=True)
            break
        except SchedulerError as exc:
            log.warning("cannot reconcile yet, the scheduler does not answer (%s); trying again in "
                        "%g s; the peer API opens after", exc, broker.config.interval_s)
            try:
                await asyncio.wait_for(stop.wait(), timeout=broker.config.interval_s)
                return
            except asyncio.TimeoutError:
                pass
    broker.certs.load()
    broker.certs.check()
    runners = []
    peer_runner = web.AppRunner(peer_app(broker), access_log=None)
    await peer_runner.setup()
    await web.TCPSite(peer_runner, broker.config.listen.host, broker.config.listen.port,
                      ssl_context=server_ssl).start()
    runners.append(peer_runner)
    if broker.config.status_listen is not None:
        status_runner = web.AppRunner(status_app(broker), access_log=None)
        await status_runner.setup()
        await web.TCPSite(status_runner, broker.config.status_listen.host,
                          broker.config.status_listen.port).start()
        runners.append(status_runner)
    log.info("broker %s listening on %s:%d", broker.config.domain, broker.config.listen.host,
             broker.config.listen.port)
    try:
        while not stop.is_set():
            if broker.certs.due():
                broker.certs.check()
            try:
                await broker.tick()
            except Exception as exc:  # keep serving: one bad interval is logged, not fatal
                log.error("interval failed: %s", exc, exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), timeout=broker.config.interval_s)
            except asyncio.TimeoutError:
                pass
    finally:
        for runner in runners:
            await runner.cleanup()
        await broker.client.close()
