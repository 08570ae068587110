"""Two domains, each with a CA of its own (`viocluster broker certs --own-ca`), trade over
mutual TLS. Each broker trusts its own CA and the peer's CA (``peers.NAME.ca``) and pins the
peer's certificate: a certificate a trusted CA signed that no one pinned gets a 403, one from a
CA nobody trusts is refused in the handshake. Also: the expiry gauge and warning, and a
renewal reloaded with SIGHUP while a contract is active."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import yaml

from broker.cli import main
from broker.negotiation import messages as m
from broker.negotiation.contracts import ContractState, Role
from broker.service.config import load_config
from broker.service.runtime import build
from broker.service.tls import KeyPair, fingerprint_pem, make_ca, make_domain_cert, not_after
from broker_harness import (
    BrokerProcess, api, free_port, make_own_ca_pki, standin_vars, standin_vm_probe, stop_standins,
    write_config,
)
from broker_slurm import reset

S = ContractState
NO_SLURM = SimpleNamespace(prefix=["false"], env={})  # a scheduler no test here asks


def _submit(cluster, *args):
    return cluster.run("sbatch", "--parsable", "-o", "/dev/null", *args).strip()


def _client_ctx(pki_dir: Path, who: str, server_ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki_dir / server_ca))
    ctx.load_cert_chain(pki_dir / f"{who}.crt", pki_dir / f"{who}.key")
    return ctx


def _heartbeat(sender: str, mid: str) -> bytes:
    return m.encode(m.Heartbeat(id=mid, sender=sender, recipient="b", sent_at=1.0))


async def _post(port: int, ctx: ssl.SSLContext, body: bytes):
    async with aiohttp.ClientSession() as s:
        async with s.post(f"https://127.0.0.1:{port}/v1/messages", data=body, ssl=ctx) as r:
            return r.status, await r.json(content_type=None)


def _strangers(pki_dir: Path) -> None:
    """c: signed by A's CA (which B trusts) but pinned by no one; x: from a CA no one trusts."""
    a_ca = KeyPair((pki_dir / "a-ca.crt").read_bytes(),
                   (pki_dir.parent / "pki-a" / "a-ca.key").read_bytes())
    make_domain_cert(a_ca, "c", ["127.0.0.1"]).write(pki_dir / "c.crt", pki_dir / "c.key")
    make_domain_cert(make_ca("stranger"), "a", ["127.0.0.1"]).write(pki_dir / "x.crt",
                                                                    pki_dir / "x.key")


@pytest.mark.root
@pytest.mark.slow
def test_two_domains_with_separate_cas_trade_a_node(tmp_path, slurm, slurm_b):
    pki = make_own_ca_pki(tmp_path / "pki")
    _strangers(pki.dir)
    # neither domain's directory holds the other's CA key
    assert not (tmp_path / "pki-a" / "b-ca.key").exists()
    assert not (tmp_path / "pki-b" / "a-ca.key").exists()
    pa, pb = free_port(), free_port()
    vms = tmp_path / "vms"
    vms.mkdir()
    extra = {"executor": {"extravars": standin_vars(slurm, vms)}}
    conf_a = write_config(tmp_path / "a.yml", "a", pa, pki, {"b": pb}, slurm, extra)
    conf_b = write_config(tmp_path / "b.yml", "b", pb, pki, {"a": pa}, slurm_b,
                          {**extra, "probes": {"vms": standin_vm_probe(slurm, vms)}})
    raw_a = yaml.safe_load(conf_a.read_text())
    assert raw_a["tls"]["ca"].endswith("a-ca.crt") and raw_a["peers"]["b"]["ca"].endswith("b-ca.crt")

    async def scenario():
        a, b = build(load_config(conf_a)), build(load_config(conf_b))
        async with api(a), api(b):
            [_submit(slurm, "-N1", "--wrap", "sleep 300") for _ in range(4)]
            slurm.wait("two running", lambda: slurm.run("squeue", "-h", "-t", "R").count("\n") == 2)
            await a.tick()
            await a.drain()
            [ca] = a.store.contracts()
            [cb] = b.store.contracts()
            assert ca.id == cb.id and ca.role is Role.BORROWER and cb.role is Role.LENDER
            assert ca.state is S.ACTIVE, ca.reason
            node = ca.node_names[0]
            assert a.scheduler.snapshot().node(node).idle
            assert (vms / "vms").read_text().split() == [node]

            # while the contract is active: a certificate of A's CA that B does not pin is a
            # 403, one of an untrusted CA never gets past the handshake, A's own is served
            b_ca = "b-ca.crt"
            status, got = await _post(pb, _client_ctx(pki.dir, "c", b_ca), _heartbeat("c", "m-c"))
            assert (status, got["code"]) == (403, "unknown_peer"), got
            with pytest.raises(aiohttp.ClientError):
                await _post(pb, _client_ctx(pki.dir, "x", b_ca), _heartbeat("a", "m-x"))
            status, got = await _post(pb, _client_ctx(pki.dir, "a", b_ca), _heartbeat("a", "m-a"))
            assert status == 200, got

            # each side saw the other's certificate: its expiry is a gauge
            gauge = "viocluster_certificate_expiry_timestamp_seconds"
            end_b = not_after((pki.dir / "b.crt").read_bytes())
            assert a.metrics.registry.get_sample_value(gauge, {"domain": "b", "kind": "peer"}) == end_b
            end_a = not_after((pki.dir / "a.crt").read_bytes())
            assert b.metrics.registry.get_sample_value(gauge, {"domain": "a", "kind": "peer"}) == end_a

            # B takes its node back, over the same channel
            [_submit(slurm_b, "-N1", "--wrap", "sleep 300") for _ in range(2)]
            slurm_b.wait("B's job running", lambda: "RUNNING" in slurm_b.run("squeue", "-h", "-o", "%T"))
            await b.tick()
            await b.drain()
            assert b.store.get(cb.id).state is S.CLOSED, b.store.get(cb.id).reason
            assert a.store.get(ca.id).state is S.CLOSED
            assert (vms / "vms").read_text().split() == []

    try:
        asyncio.run(scenario())
    finally:
        stop_standins(slurm)
        _delete_dynamic_nodes(slurm)
        reset(slurm)
        reset(slurm_b)


def _lender(tmp_path, peer_ca: bool = True):
    pki = make_own_ca_pki(tmp_path / "pki")
    _strangers(pki.dir)
    port = free_port()
    conf = write_config(tmp_path / "b.yml", "b", port, pki, {"a": free_port()}, NO_SLURM)
    if not peer_ca:
        raw = yaml.safe_load(conf.read_text())
        del raw["peers"]["a"]["ca"]
        conf.write_text(yaml.safe_dump(raw))
    return pki, port, conf


def test_without_a_trade_unpinned_and_untrusted_certificates_are_refused(tmp_path):
    pki, port, conf = _lender(tmp_path)

    async def scenario():
        broker = build(load_config(conf))
        async with api(broker):
            ok = await _post(port, _client_ctx(pki.dir, "a", "b-ca.crt"), _heartbeat("a", "m-1"))
            unpinned = await _post(port, _client_ctx(pki.dir, "c", "b-ca.crt"), _heartbeat("c", "m-2"))
            with pytest.raises(aiohttp.ClientError):
                await _post(port, _client_ctx(pki.dir, "x", "b-ca.crt"), _heartbeat("a", "m-3"))
            return ok, unpinned, broker.store.message_count()

    ok, unpinned, count = asyncio.run(scenario())
    assert ok[0] == 200 and (unpinned[0], unpinned[1]["code"]) == (403, "unknown_peer")
    assert count == 1


def test_a_pinned_peer_whose_ca_is_not_given_is_refused_in_the_handshake(tmp_path):
    """Without peers.a.ca, B does not trust A's CA: the pin alone does not open the door."""
    pki, port, conf = _lender(tmp_path, peer_ca=False)

    async def scenario():
        broker = build(load_config(conf))
        async with api(broker):
            with pytest.raises(aiohttp.ClientError):
                await _post(port, _client_ctx(pki.dir, "a", "b-ca.crt"), _heartbeat("a", "m-1"))

    asyncio.run(scenario())


@pytest.mark.parametrize("what,words", [
    ("missing", "does not exist; give the CA certificate"),
    ("garbage", "is not a PEM certificate"),
    ("leaf", "is not a CA's"),
])
def test_a_wrong_peer_ca_file_is_one_line(tmp_path, capsys, what, words):
    pki, _port, conf = _lender(tmp_path)
    capsys.readouterr()  # the CLI's warnings that these test CA keys are unencrypted
    raw = yaml.safe_load(conf.read_text())
    bad = tmp_path / "bad.crt"
    if what == "garbage":
        bad.write_text("not a certificate\n")
    elif what == "leaf":
        bad.write_bytes((pki.dir / "a.crt").read_bytes())
    raw["peers"]["a"]["ca"] = str(bad)
    conf.write_text(yaml.safe_dump(raw))
    assert main(["broker", "run", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "peers.a.ca" in err and words in err, err
    assert "Traceback" not in err


def test_a_peer_may_be_pinned_to_several_certificates(tmp_path):
    pki, _port, conf = _lender(tmp_path)
    raw = yaml.safe_load(conf.read_text())
    second = fingerprint_pem((pki.dir / "c.crt").read_bytes())
    raw["peers"]["a"]["fingerprint"] = [pki.fingerprints["a"], second]
    conf.write_text(yaml.safe_dump(raw))
    config = load_config(conf)
    assert config.peers["a"].pins == (pki.fingerprints["a"], second)
    assert config.peer_by_fingerprint(second).name == "a"
    assert config.peer_by_fingerprint(pki.fingerprints["a"]).name == "a"
    raw["peers"]["a"]["fingerprint"] = [pki.fingerprints["a"], "sha256:nope"]
    conf.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match=r"peers\.a\.fingerprint\[1\]"):
        load_config(conf)


def test_own_ca_certs_touch_no_other_domain_and_renew_keeps_the_key(tmp_path, capsys):
    d = tmp_path / "pki"
    assert main(["broker", "certs", "--dir", str(d), "--domain", "a"]) == 0  # deployment CA
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    capsys.readouterr()
    assert main(["broker", "certs", "--dir", str(d), "--own-ca", "--domain", "b=127.0.0.1"]) == 0
    name, fp_b, made = capsys.readouterr().out.strip().split("\t")
    assert (name, made) == ("b", "created")
    after = {f.name: f.read_bytes() for f in d.iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"b.crt", "b.key", "b-ca.crt", "b-ca.key"}
    assert not fp_b == fingerprint_pem(before["a.crt"])

    key = (d / "b.key").read_bytes()
    assert main(["broker", "certs", "--dir", str(d), "--renew", "b"]) == 0
    name, new_fp, made, old_fp = capsys.readouterr().out.strip().split("\t")
    assert (name, made, old_fp) == ("b", "renewed", fp_b) and new_fp != fp_b
    assert (d / "b.key").read_bytes() == key  # same key, new certificate from b's own CA
    assert new_fp == fingerprint_pem((d / "b.crt").read_bytes())
    from broker.service.tls import alt_names, issued_by
    assert issued_by((d / "b.crt").read_bytes(), (d / "b-ca.crt").read_bytes())
    assert alt_names((d / "b.crt").read_bytes()) == ["127.0.0.1"]
    # a renewal of the deployment-CA domain uses ca.crt
    assert main(["broker", "certs", "--dir", str(d), "--renew", "a"]) == 0
    assert issued_by((d / "a.crt").read_bytes(), (d / "ca.crt").read_bytes())
    capsys.readouterr()
    assert main(["broker", "certs", "--dir", str(d), "--renew", "zz"]) == 2
    assert "must exist" in capsys.readouterr().err
    assert main(["broker", "certs", "--dir", str(d), "--own-ca", "--domain", "q-ca"]) == 2


def test_a_certificate_never_outlives_its_ca(tmp_path):
    ca = make_ca("short", days=2)
    cert = make_domain_cert(ca, "a", days=825)
    assert not_after(cert.cert_pem) <= not_after(ca.cert_pem)


def test_expiry_gauges_and_a_warning_well_before(tmp_path, caplog):
    pki, _port, conf = _lender(tmp_path)
    # B's certificate ends in 2 days (from its own CA, with its key): within the 30 days
    b_ca = KeyPair((pki.dir / "b-ca.crt").read_bytes(),
                   (tmp_path / "pki-b" / "b-ca.key").read_bytes())
    short = make_domain_cert(b_ca, "b", ["127.0.0.1"], days=2, key_pem=(pki.dir / "b.key").read_bytes())
    (pki.dir / "b.crt").write_bytes(short.cert_pem)
    broker = build(load_config(conf))
    caplog.set_level(logging.WARNING, logger="broker.certs")
    broker.certs.load()
    warnings = broker.certs.check()
    gauge = "viocluster_certificate_expiry_timestamp_seconds"
    reg = broker.metrics.registry
    assert reg.get_sample_value(gauge, {"domain": "b", "kind": "own"}) == not_after(short.cert_pem)
    assert reg.get_sample_value(gauge, {"domain": "b", "kind": "own_ca"}) == not_after(b_ca.cert_pem)
    assert reg.get_sample_value(gauge, {"domain": "a", "kind": "peer_ca"}) == not_after(
        (pki.dir / "a-ca.crt").read_bytes())
    [warning] = warnings
    assert "our certificate" in warning and "expires in 2.0 days" in warning
    assert "--renew" in warning and warning in caplog.text
    # checked again a day later, not before
    assert not broker.certs.due()
    broker.certs.clock = lambda: time.time() + 86401
    assert broker.certs.due()
    assert "expires in 1.0 days" in broker.certs.check()[0]
    # a setting of 1 day: nothing to say yet at 2 days
    raw = yaml.safe_load(conf.read_text())
    raw["tls"]["expiry_warning_days"] = 1
    conf.write_text(yaml.safe_dump(raw))
    quiet = build(load_config(conf))
    quiet.certs.load()
    assert quiet.certs.check() == []
    asyncio.run(broker.client.close())
    asyncio.run(quiet.client.close())


def _presented(port: int, ca: Path) -> str:
    """The pin of the certificate a broker's server presents now (a fresh handshake)."""
    import socket
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        from broker.service.tls import fingerprint_der
        return fingerprint_der(tls.getpeercert(binary_form=True))


def _metric(port: int, name: str, labels: str) -> float | None:
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.root
@pytest.mark.slow
def test_a_renewed_certificate_is_reloaded_with_sighup_while_a_contract_is_active(
        tmp_path, slurm, slurm_b):
    """B renews its certificate (same key, new fingerprint) while lending a node to A: A pins
    the old and the new one and reloads, B takes the new one and reloads, A drops the old pin
    and reloads. Both brokers keep running; the contract stays active throughout, and each
    side keeps hearing the other."""
    pki = make_own_ca_pki(tmp_path / "pki")
    pa, pb, status_a = free_port(), free_port(), free_port()
    vms = tmp_path / "vms"
    vms.mkdir()
    extra = {"executor": {"extravars": standin_vars(slurm, vms)}, "offer_ttl_s": 30}
    conf_a = write_config(tmp_path / "a.yml", "a", pa, pki, {"b": pb}, slurm,
                          {**extra, "status_listen": {"host": "127.0.0.1", "port": status_a}})
    conf_b = write_config(tmp_path / "b.yml", "b", pb, pki, {"a": pa}, slurm_b,
                          {**extra, "probes": {"vms": standin_vm_probe(slurm, vms)}})
    a = BrokerProcess("a", conf_a, pa, tmp_path / "a.log")
    b = BrokerProcess("b", conf_b, pb, tmp_path / "b.log")
    old_fp = pki.fingerprints["b"]

    def pin_b(*fps: str) -> None:
        raw = yaml.safe_load(conf_a.read_text())
        raw["peers"]["b"]["fingerprint"] = list(fps)
        conf_a.write_text(yaml.safe_dump(raw))

    def hears(proc: BrokerProcess, line: str, after: int) -> None:
        deadline = time.monotonic() + 30
        while line not in proc.log.read_text()[after:]:
            assert time.monotonic() < deadline, f"{proc.name}: no {line!r}\n{proc.log.read_text()[-3000:]}"
            time.sleep(0.1)

    try:
        b.start()
        for _ in range(4):
            _submit(slurm, "-N1", "--wrap", "sleep 300")
        a.start()
        c = a.wait_state(S.ACTIVE)
        b.wait_contract(c.id, S.ACTIVE)
        assert _presented(pb, pki.dir / "b-ca.crt") == old_fp

        # 1. B's administrator renews (in B's own directory, with B's CA)
        out = subprocess_certs(tmp_path / "pki-b", "--renew", "b", "--days", "400")
        name, new_fp, made, was = out.strip().split("\t")
        assert (name, made, was) == ("b", "renewed", old_fp) and new_fp != old_fp
        # 2. A pins both and reloads
        pin_b(old_fp, new_fp)
        mark_a = len(a.log.read_text())
        a.signal(signal.SIGHUP)
        hears(a, "reloaded TLS", mark_a)
        # 3. B installs the new certificate and reloads
        (pki.dir / "b.crt").write_bytes((tmp_path / "pki-b" / "b.crt").read_bytes())
        mark_b = len(b.log.read_text())
        b.signal(signal.SIGHUP)
        hears(b, "reloaded TLS", mark_b)
        assert _presented(pb, pki.dir / "b-ca.crt") == new_fp
        # 4. A drops the old pin and reloads: its new connections to B see the new certificate
        pin_b(new_fp)
        mark_a = len(a.log.read_text())
        a.signal(signal.SIGHUP)
        hears(a, "reloaded TLS", mark_a)
        end = not_after((tmp_path / "pki-b" / "b.crt").read_bytes())
        deadline = time.monotonic() + 30
        gauge = "viocluster_certificate_expiry_timestamp_seconds"
        while _metric(status_a, gauge, 'domain="b",kind="peer"') != end:
            assert time.monotonic() < deadline, a.log.read_text()[-3000:]
            time.sleep(0.2)
        # a few more heartbeats, then: still the same active contract on both sides
        time.sleep(3)
        assert a.proc.poll() is None and b.proc.poll() is None
        # (A's queue still outgrows its nodes: a further request may be in flight, or declined,
        # when the contracts are read; no second trade is agreed)
        settled = (S.PROPOSED, S.CLOSED, S.FAILED)
        for proc in (a, b):
            states = {x.id: x.state for x in proc.contracts()}
            assert states.get(c.id) == S.ACTIVE, (proc.name, states)
            assert all(s in settled for i, s in states.items() if i != c.id), (proc.name, states)
        for proc in (a, b):
            text = proc.log.read_text()
            assert "refusing" not in text and "unknown_peer" not in text and "reload refused" not in text
        # B takes its node back over the renewed certificate
        for _ in range(2):
            _submit(slurm_b, "-N1", "--wrap", "sleep 300")
        b.wait_contract(c.id, S.CLOSED)
        a.wait_contract(c.id, S.CLOSED)
    finally:
        a.stop()
        b.stop()
        stop_standins(slurm)
        _delete_dynamic_nodes(slurm)
        reset(slurm)
        reset(slurm_b)


def _delete_dynamic_nodes(cluster) -> None:
    """A stand-in VM node a failed test left in A's Slurm would count in the next test."""
    for node in cluster.run("sinfo", "-N", "-h", "-o", "%N", check=False).split():
        if node not in ("n1", "n2"):
            cluster.run("scontrol", "delete", f"nodename={node}", check=False)


def subprocess_certs(dir: Path, *args: str) -> str:
    import subprocess
    import sys
    from broker_harness import REPO
    return subprocess.run([sys.executable, "-m", "broker.cli", "broker", "certs", "--dir", str(dir),
                           *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def test_a_reload_with_a_broken_certificate_keeps_the_running_one(tmp_path, caplog):
    from broker.service.runtime import reload_tls
    from broker.service.tls import server_context
    pki, _port, conf = _lender(tmp_path)

    async def scenario():
        broker = build(load_config(conf))
        server = server_context(broker.config.tls)
        before = broker.config
        (pki.dir / "b.crt").write_text("broken\n")
        assert reload_tls(broker, server) is False
        assert broker.config is before
        await broker.client.close()

    caplog.set_level(logging.ERROR)
    asyncio.run(scenario())
    assert "reload refused" in caplog.text and "tls" in caplog.text
