"""viocluster broker certs, contracts, status; the status listener's /metrics and /status."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import yaml
from aiohttp import web
from broker_harness import make_pki

from broker.cli import main
from broker.negotiation.contracts import Contract, ContractState, Role
from broker.negotiation.messages import Needs, Terms
from broker.service.api import status_app
from broker.service.config import load_config
from broker.service.runtime import build
from broker.service.store import Store
from broker.service.tls import fingerprint_pem


@pytest.fixture
def conf(tmp_path):
    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "a.yml"
    path.write_text(yaml.safe_dump({
        "domain": "a", "state_dir": str(tmp_path / "state"),
        "listen": {"host": "127.0.0.1", "port": 8443},
        "tls": pki.files("a"),
        "peers": {"b": {"url": "https://127.0.0.1:8444", "fingerprint": pki.fingerprints["b"]}},
    }))
    store = Store(tmp_path / "state" / "contracts.db")
    c, t = Contract.propose("a-c1", Role.BORROWER, "a", "b", 1, Needs(), Terms(), 1.0)
    store.create(c, t)
    c2, t2 = c.advance(ContractState.AGREED, 2.0, "accepting n1 from b", nodes=(("n1", "a-v1-0"),))
    store.save(c2, t2)
    c3, t3 = Contract.propose("a-c0", Role.BORROWER, "a", "b", 1, Needs(), Terms(), 0.5)
    store.create(c3, t3)
    store.save(*c3.advance(ContractState.CLOSED, 0.7, "b did not offer"))
    store.close()
    return path


def test_contracts_lists_open_ones_and_a_history(conf, capsys):
    assert main(["contracts", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "a-c1" in out and "agreed" in out and "a-v1-0" in out and "a-c0" not in out
    assert main(["contracts", "--config", str(conf), "--all"]) == 0
    assert "a-c0" in capsys.readouterr().out
    assert main(["contracts", "--config", str(conf), "--history", "a-c1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in lines[1:]] == ["proposed", "agreed"]
    assert main(["contracts", "--config", str(conf), "--history", "nope"]) == 2


def test_status_without_a_running_broker_reads_the_store(conf, capsys):
    assert main(["status", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["DOMAIN", "DEMAND", "PHYSICAL"]
    assert "broker not running" in out and "a-c1" in out
    assert "\nb " in out  # the peer domain has its row


def test_certs_makes_a_ca_once_and_prints_pins(tmp_path, capsys):
    d = tmp_path / "pki"
    assert main(["broker", "certs", "--dir", str(d), "--domain", "a=127.0.0.1", "--domain", "b"]) == 0
    first = capsys.readouterr().out.split("\n")
    assert first[0].split("\t") == ["a", fingerprint_pem((d / "a.crt").read_bytes()), "created"]
    ca = (d / "ca.crt").read_bytes()
    assert main(["broker", "certs", "--dir", str(d), "--domain", "a"]) == 0
    assert capsys.readouterr().out.split("\t")[2].strip() == "kept" and (d / "ca.crt").read_bytes() == ca
    assert oct((d / "a.key").stat().st_mode & 0o777) == "0o600"
    assert main(["broker", "certs", "--dir", str(d), "--domain", "bad name"]) == 2


def test_status_listener_serves_metrics_and_status(conf):
    broker = build(load_config(conf))

    async def scenario():
        runner = web.AppRunner(status_app(broker))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        broker._count_contracts()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                metrics = await r.text()
            async with s.get(f"http://127.0.0.1:{port}/status") as r:
                status = json.loads(await r.text())
        await runner.cleanup()
        await broker.client.close()
        return metrics, status

    metrics, status = asyncio.run(scenario())
    assert 'viocluster_contracts{role="borrower",state="agreed"} 1.0' in metrics
    assert status["domain"] == "a" and {c["id"] for c in status["contracts"]} == {"a-c0", "a-c1"}


def test_history_answers_for_a_closed_contract_while_it_is_kept(conf, capsys):
    store = Store(conf.parent / "state" / "contracts.db")
    c = store.get("a-c1")
    c, t = c.advance(ContractState.RECLAIMING, 3.0, "returning: idle")
    store.save(c, t)
    store.save(*c.advance(ContractState.CLOSED, 4.0, "returned to the lender"))
    refused, t = Contract.propose("a-c9", Role.BORROWER, "a", "b", 1, Needs(), Terms(), 5.0)
    store.create(refused, t)
    store.drop_refused(refused, 5.5, "b did not offer: lending policy offers 0 now")
    store.close()
    capsys.readouterr()
    assert main(["contracts", "--config", str(conf), "--history", "a-c1"]) == 0
    out = capsys.readouterr().out
    assert "returned to the lender" in out and "reclaiming" in out
    assert main(["contracts", "--config", str(conf), "--all"]) == 0
    out = capsys.readouterr().out
    assert "a-c1" in out and "counted, not kept" in out and "lending policy offers 0 now" in out
    # compacted after the retention period: the history says why it is gone
    store = Store(conf.parent / "state" / "contracts.db")
    assert store.compact(now=4.0 + 31 * 86400, retention_s=30 * 86400).contracts == 2
    store.close()
    assert main(["contracts", "--config", str(conf), "--history", "a-c1"]) == 2
    assert "kept 30 days (contract_retention_days)" in capsys.readouterr().err
