"""The broker role applied for real to this machine (no systemd here: the unit tasks and the
handlers skip; the test reads which handlers were notified from the run's events)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import ansible_runner
import yaml
from aiohttp import web

from broker.service.api import peer_app
from broker.service.config import load_config
from broker.service.runtime import build, reload_tls
from broker.service.tls import (
    KeyPair, fingerprint_der, fingerprint_pem, is_encrypted_key, make_domain_cert, not_after,
    server_context,
)

REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "a passphrase the vault would hold"
HANDLERS = {"Reload viocluster-broker", "Restart viocluster-broker"}


def _broker(tmp: Path, domain: str, **extra: Any) -> dict[str, Any]:
    return {
        "role": "broker",
        "broker_domain": domain,
        "broker_create_user": False,
        "broker_user": "root",
        "broker_group": "root",
        "broker_venv": str(Path(sys.executable).parent.parent),
        "broker_config_dir": str(tmp / domain / "etc"),
        "broker_state_dir": str(tmp / domain / "state"),
        "broker_pki_dir": str(tmp / "pki"),
        "broker_listen_host": "127.0.0.1",
        "broker_ca_passphrase_file": str(tmp / "passphrase"),
        "broker_policy": {"lending": {"fraction_idle": 0.5}},
        **extra,
    }


def _play(tmp: Path, **extra: Any) -> Path:
    (tmp / "passphrase").write_text(PASSPHRASE + "\n")
    play = [{
        "name": "Broker role on this machine",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "roles": [_broker(tmp, "vbka", broker_peers=[
            {"name": "vbkb", "url": "https://127.0.0.1:18443", "fingerprint": "sha256:" + "0" * 64}],
            **extra)],
    }]
    path = tmp / "play.yml"
    path.write_text(yaml.safe_dump(play))
    return path


def _run(play: Path, tags: str = "", inventory: str = "localhost") -> tuple[dict, list[str]]:
    """Run the play; its stats for the host(s) summed, and the names of the handlers that ran
    (skipped ones included: here no systemd runs them)."""
    bindir = str(Path(sys.executable).parent)
    (play.parent / "runner").mkdir(exist_ok=True)
    runner = ansible_runner.run(
        private_data_dir=str(play.parent / "runner"), playbook=str(play), inventory=inventory,
        envvars={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
                 "PATH": f"{bindir}:/usr/bin:/bin"},
        quiet=True, timeout=300, tags=tags or None,
    )
    assert runner.rc == 0, runner.stdout.read()[-4000:]
    stats: dict[str, Any] = {k: sum(v.values()) for k, v in runner.stats.items() if isinstance(v, dict)}
    stats["changed_tasks"] = sorted({f'{e["event_data"]["host"]}: {e["event_data"]["task"]}'
                                     for e in runner.events if e["event"] == "runner_on_ok"
                                     and e["event_data"]["res"].get("changed")})
    handlers = sorted({e["event_data"]["task"] for e in runner.events
                       if e["event"] == "playbook_on_task_start"
                       and e["event_data"]["task"] in HANDLERS})
    return stats, handlers


def test_role_writes_a_valid_config_with_pinned_peers_and_is_idempotent(tmp_path):
    play = _play(tmp_path)
    first, _ = _run(play)
    assert first["changed"] > 0
    config = load_config(tmp_path / "vbka" / "etc" / "broker.yml")
    assert config.domain == "vbka" and config.peers["vbkb"].fingerprint == "sha256:" + "0" * 64
    assert (tmp_path / "vbka" / "etc" / "vbka.key").stat().st_mode & 0o777 == 0o600
    # the CA key is encrypted with the passphrase and stays on the control node; the domain's
    # key is not (its broker reads it unattended)
    assert is_encrypted_key((tmp_path / "pki" / "ca.key").read_bytes())
    assert not is_encrypted_key((tmp_path / "vbka" / "etc" / "vbka.key").read_bytes())
    assert not (tmp_path / "vbka" / "etc" / "ca.key").exists()
    config.tls.check("test")
    second, handlers = _run(play)
    assert second["changed"] == 0 and second["failures"] == 0 and handlers == []


def _presented(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return fingerprint_der(tls.getpeercert(binary_form=True))


def test_a_certificate_near_its_end_is_renewed_copied_and_reloaded_not_restarted(tmp_path):
    """The role renews a certificate that ends within broker_cert_renew_days (same key), pins
    the old and the new one, copies it and notifies the reload handler (SIGHUP), not a restart;
    a broker serving the old certificate takes the new one on that reload. Run again, nothing
    changes."""
    # no copy of the project's playbooks: others' edits of them would count as changes
    play = _play(tmp_path, broker_project_src="")
    _run(play)
    pki, etc = tmp_path / "pki", tmp_path / "vbka" / "etc"
    config = load_config(etc / "broker.yml")
    key = (pki / "vbka.key").read_bytes()
    ca = KeyPair((pki / "ca.crt").read_bytes(), (pki / "ca.key").read_bytes())
    short = make_domain_cert(ca, "vbka", ["127.0.0.1"], 10, key, PASSPHRASE.encode())
    (pki / "vbka.crt").write_bytes(short.cert_pem)
    (etc / "vbka.crt").write_bytes(short.cert_pem)  # what the head has: ends in 10 days
    old = fingerprint_pem(short.cert_pem)

    async def scenario() -> tuple[str, str]:
        broker = build(config)
        server = server_context(config.tls)
        runner = web.AppRunner(peer_app(broker), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", config.listen.port, ssl_context=server)
        await site.start()
        try:
            before = await asyncio.to_thread(_presented, config.listen.port, etc / "ca.crt")
            stats, handlers = await asyncio.to_thread(_run, play, "broker_certs")
            assert stats["changed"] > 0, stats
            assert handlers == ["Reload viocluster-broker"], handlers  # not a restart
            assert reload_tls(broker, server)  # what the handler's SIGHUP does
            after = await asyncio.to_thread(_presented, config.listen.port, etc / "ca.crt")
            return before, after
        finally:
            await runner.cleanup()
            await broker.client.close()
            broker.store.close()

    before, after = asyncio.run(scenario())
    new = fingerprint_pem((etc / "vbka.crt").read_bytes())
    assert before == old and after == new != old
    assert (pki / "vbka.key").read_bytes() == key and (etc / "vbka.key").read_bytes() == key
    assert not_after((etc / "vbka.crt").read_bytes()) > not_after(short.cert_pem) + 700 * 86400
    # the next runs: nothing is near its end, nothing changes
    for _ in range(2):
        stats, handlers = _run(play)
        assert stats["changed"] == 0 and handlers == [], (stats, handlers)


def test_two_domains_with_their_own_cas_get_each_others_ca_and_old_and_new_pins(tmp_path):
    """broker_own_ca: each domain's certificate comes from its own CA (its key encrypted), each
    head gets its CA and the peer's, broker.yml names the peer's as peers.NAME.ca, and the pins
    come from the peer's run. A renewal pins the old and the new certificate until the head
    has the new one; the run after drops the old pin."""
    (tmp_path / "passphrase").write_text(PASSPHRASE + "\n")
    hosts = {"vbka": 18441, "vbkb": 18442}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        h: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "broker_listen_port": port,
            "broker_peers": [{"name": p, "url": f"https://127.0.0.1:{hosts[p]}", "host": p}
                             for p in hosts if p != h]}
        for h, port in hosts.items()}}}))
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Two brokers on this machine", "hosts": "all", "gather_facts": False,
        "roles": [{**_broker(tmp_path, "{{ inventory_hostname }}", broker_own_ca=True,
                              broker_project_src=""),
                   "broker_config_dir": str(tmp_path) + "/{{ inventory_hostname }}/etc",
                   "broker_state_dir": str(tmp_path) + "/{{ inventory_hostname }}/state"}],
    }]))
    stats, _ = _run(play, inventory=str(inventory))
    assert stats["failures"] == 0, stats
    pki = tmp_path / "pki"
    assert not (pki / "ca.key").exists()
    for me, peer in (("vbka", "vbkb"), ("vbkb", "vbka")):
        assert is_encrypted_key((pki / f"{me}-ca.key").read_bytes())
        etc = tmp_path / me / "etc"
        config = load_config(etc / "broker.yml")
        config.tls.check("test")
        assert config.tls.ca == etc / f"{me}-ca.crt"
        assert config.peers[peer].ca == etc / f"{peer}-ca.crt"
        assert (etc / f"{peer}-ca.crt").read_bytes() == (pki / f"{peer}-ca.crt").read_bytes()
        assert config.peers[peer].pins == (fingerprint_pem((pki / f"{peer}.crt").read_bytes()),)
        assert not (etc / "ca.crt").exists()
    stats, _ = _run(play, inventory=str(inventory))
    assert stats["changed"] == 0, stats

    # vbkb's certificate nears its end: the renewing run pins old and new at vbka ...
    b_ca = KeyPair((pki / "vbkb-ca.crt").read_bytes(), (pki / "vbkb-ca.key").read_bytes())
    short = make_domain_cert(b_ca, "vbkb", ["127.0.0.1"], 5, (pki / "vbkb.key").read_bytes(),
                             PASSPHRASE.encode())
    for where in (pki, tmp_path / "vbkb" / "etc"):
        (where / "vbkb.crt").write_bytes(short.cert_pem)
    old = fingerprint_pem(short.cert_pem)
    _run(play, tags="broker_certs", inventory=str(inventory))
    new = fingerprint_pem((pki / "vbkb.crt").read_bytes())
    assert new != old
    pins = load_config(tmp_path / "vbka" / "etc" / "broker.yml").peers["vbkb"].pins
    assert pins == (old, new), (pins, old, new, fingerprint_pem((tmp_path / "vbkb" / "etc" / "vbkb.crt").read_bytes()))
    # ... the next run drops the old one, and the one after changes nothing
    stats, handlers = _run(play, inventory=str(inventory))
    assert stats["changed"] == 1 and handlers == ["Reload viocluster-broker"]
    assert load_config(tmp_path / "vbka" / "etc" / "broker.yml").peers["vbkb"].pins == (new,)
    stats, _ = _run(play, inventory=str(inventory))
    assert stats["changed"] == 0, stats
