"""The peer API over real mutual TLS on loopback: every bad request gets the right 4xx and
changes nothing; a repeated message id is answered again without a second effect."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import pytest

from broker.negotiation import messages as m
from broker.service.config import load_config
from broker.service.runtime import build
from broker_harness import api, free_port, make_pki, write_config

pytestmark = pytest.mark.root


def _ctx(pki_dir: Path, who: str | None, ca: str = "ca.crt") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki_dir / ca))
    if who:
        ctx.load_cert_chain(pki_dir / f"{who}.crt", pki_dir / f"{who}.key")
    return ctx


def _request(sender="a", mid="m-1", cid="a-c1", nodes=1) -> bytes:
    return m.encode(m.Request(id=mid, sender=sender, recipient="b", sent_at=1.0, contract_id=cid,
                              nodes=nodes, needs=m.Needs(1, 0, 0), terms=m.Terms()))


@pytest.fixture
def lender(tmp_path, slurm_b):
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    conf = write_config(tmp_path / "b.yml", "b", port, pki, {"a": free_port()}, slurm_b)
    return pki, port, conf


def _run(lender, steps):
    pki, port, conf = lender

    async def scenario():
        broker = build(load_config(conf))
        async with api(broker):
            async def post(who, body, ca="ca.crt"):
                async with aiohttp.ClientSession() as s:
                    async with s.post(f"https://127.0.0.1:{port}/v1/messages", data=body,
                                      ssl=_ctx(pki.dir, who, ca)) as r:
                        return r.status, await r.json(content_type=None)
            return await steps(broker, post)

    return asyncio.run(scenario())


def _unchanged(broker):
    return (len(broker.store.contracts()), broker.store.message_count())


def test_refusals_name_the_reason_and_change_nothing(lender):
    async def steps(broker, post):
        before = _unchanged(broker)
        cases = [
            (None, _request(), 401, "no_certificate", "client certificate required"),
            ("c", _request(sender="c"), 403, "unknown_peer", "is not pinned"),
            ("a", _request(sender="c"), 403, "sender_mismatch", "does not match the certificate"),
            ("a", b"{not json", 400, "malformed", "malformed JSON"),
            ("a", json.dumps({"type": "gossip", "id": "m-9"}).encode(), 400, "malformed",
             "unknown message type 'gossip'"),
            ("a", _request(nodes=0), 400, "malformed", "request.nodes"),
            ("a", b"x" * (m.MAX_BODY + 10), 413, "too_large", "the limit"),
            ("a", m.encode(m.Heartbeat(id="m-8", sender="a", recipient="z", sent_at=1.0)), 400,
             "wrong_recipient", "this is the broker of 'b'"),
        ]
        for who, body, status, code, words in cases:
            got_status, got = await post(who, body)
            assert (got_status, got["code"]) == (status, code), got
            assert words in got["error"]
            assert _unchanged(broker) == before
        return True

    assert _run(lender, steps)


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(lender):
    """x.crt is signed by a foreign CA: TLS refuses it before any HTTP is spoken."""
    async def steps(broker, post):
        before = _unchanged(broker)
        # TLS 1.3 reports the refusal as an alert or a reset, never as an HTTP answer
        with pytest.raises(aiohttp.ClientError):
            await post("x", _request())
        assert _unchanged(broker) == before
        return True

    assert _run(lender, steps)


def test_a_repeated_message_id_is_answered_again_without_a_second_effect(lender):
    async def steps(broker, post):
        status1, first = await post("a", _request(mid="m-dup", cid="a-dup"))
        assert status1 == 200 and first["reply"]["type"] == "offer", first
        after_first = _unchanged(broker)
        status2, second = await post("a", _request(mid="m-dup", cid="a-dup"))
        assert status2 == 200 and second.pop("duplicate") is True
        assert second == first
        assert _unchanged(broker) == after_first
        # the same id with other content is refused
        status3, third = await post("a", _request(mid="m-dup", cid="a-other"))
        assert (status3, third["code"]) == (409, "id_reused")
        assert _unchanged(broker) == after_first
        # an accept for a contract this broker never made is a 404, and changes nothing
        accept = m.encode(m.Accept(id="m-acc", sender="a", recipient="b", sent_at=2.0,
                                   contract_id="a-never", hosts=("n1",)))
        status4, fourth = await post("a", accept)
        assert (status4, fourth["code"]) == (404, "unknown_contract")
        return True

    assert _run(lender, steps)


def test_a_client_refuses_a_server_whose_pin_does_not_match(tmp_path, slurm_b):
    """B's config pins for 'a' the certificate of 'c': B will not talk to A's real server."""
    from broker.service.client import PeerClient
    from broker.service.config import Peer
    from broker.service.tls import TlsFiles, client_context

    pki = make_pki(tmp_path / "pki")
    port = free_port()
    conf = write_config(tmp_path / "a.yml", "a", port, pki, {"b": free_port()}, slurm_b)

    async def scenario():
        broker = build(load_config(conf))
        async with api(broker):
            files = TlsFiles(*(Path(pki.files("b")[k]) for k in ("cert", "key", "ca")))
            client = PeerClient(client_context(files))
            wrong = Peer("a", f"https://127.0.0.1:{port}", pki.fingerprints["c"])
            hb = m.Heartbeat(id="m-1", sender="b", recipient="a", sent_at=1.0)
            reply = await client.send(wrong, hb)
            await client.close()
            return reply, broker.store.message_count()

    reply, count = asyncio.run(scenario())
    assert reply.status == 0 and "is pinned; refusing" in reply.error
    assert count == 0
