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


def _send(port, ctx, method, path, body=b"", headers=None):
    async def go():
        async with aiohttp.ClientSession(auto_decompress=False) as s, s.request(
                method, f"https://127.0.0.1:{port}{path}", data=body, headers=headers or {},
                ssl=ctx) as r:
            return r.status, dict(r.headers), await r.json(content_type=None)
    return go()


def test_any_bad_input_is_a_4xx_that_names_it_never_a_5xx(lender):
    """The issue: an integer too large for a float in sent_at or terms.lease_s was a 500."""
    import gzip

    pki, port, _conf = lender
    good = json.loads(_request(mid="m-good"))

    def with_(text: str) -> bytes:  # the request with sent_at written as ``text``
        return json.dumps({**good, "sent_at": "@"}).replace('"@"', text).encode()

    def lease(value) -> bytes:
        return json.dumps({**good, "terms": {**good["terms"], "lease_s": value}}).encode()

    async def steps(broker, post):
        before = _unchanged(broker)
        ctx = _ctx(pki.dir, "a")
        cases = [
            ("POST", "/v1/messages", with_("1" + "0" * 400), {}, 400, "malformed",
             "expected a number from 0 to 253402300799"),
            ("POST", "/v1/messages", lease(10**400), {}, 400, "malformed",
             ("request.terms.lease_s: got an integer of 401 digits; expected a number from 0 to "
              "10000000000 (seconds)")),
            ("POST", "/v1/messages", with_("NaN"), {}, 400, "malformed", "got NaN"),
            ("POST", "/v1/messages", with_("-Infinity"), {}, 400, "malformed", "got -Infinity"),
            ("POST", "/v1/messages", with_("9" * 5000), {}, 400, "malformed",
             "thousands of digits"),
            ("POST", "/v1/messages", b"[" * 60000, {}, 400, "malformed", "nested too deeply"),
            ("POST", "/v1/messages", b'{"type":"request","type":"offer"}', {}, 400, "malformed",
             "appears twice"),
            ("POST", "/v1/messages", b"\xff" + _request(), {}, 400, "malformed", "not UTF-8"),
            ("POST", "/v1/messages", b"not gzip", {"Content-Encoding": "gzip"}, 400, "bad_body",
             "Can not decode content-encoding"),
            ("POST", "/v1/messages", gzip.compress(b" " * 300_000), {"Content-Encoding": "gzip"},
             413, "too_large", "the limit"),
            ("GET", "/v1/messages", b"", {}, 405, "method_not_allowed", "use POST"),
            ("DELETE", "/v1/messages", _request(), {}, 405, "method_not_allowed", "use POST"),
            ("POST", "/v1/message", _request(), {}, 404, "not_found",
             "peers POST messages to /v1/messages"),
            ("POST", "/", _request(), {}, 404, "not_found", "no such path '/'"),
        ]
        for method, path, body, headers, status, code, words in cases:
            got_status, _headers, got = await _send(port, ctx, method, path, body, headers)
            assert (got_status, got["code"]) == (status, code), (path, body[:80], got)
            assert words in got["error"], got
            assert _unchanged(broker) == before
        # the content type is not what makes a message: a valid one is accepted with any
        status, _headers, got = await _send(port, ctx, "POST", "/v1/messages",
                                            _request(mid="m-ct", cid="a-ct"),
                                            {"Content-Type": "text/plain"})
        assert status == 200 and got["reply"]["type"] in ("offer", "decline"), got
        return True

    assert _run(lender, steps)


@pytest.fixture
def lender_of_two(tmp_path, slurm_b):
    """B with peers a and c, and a low rate limit: 5 at once, then one every 2 s."""
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    conf = write_config(tmp_path / "b.yml", "b", port, pki, {"a": free_port(), "c": free_port()},
                        slurm_b, {"rate_limit": {"per_s": 0.5, "burst": 5}})
    return pki, port, conf


def test_a_flooding_peer_gets_429_while_another_peer_is_served(lender_of_two):
    pki, port, conf = lender_of_two

    def heartbeat(sender: str, i: int) -> bytes:
        return m.encode(m.Heartbeat(id=f"m-{sender}{i}", sender=sender, recipient="b",
                                    sent_at=1.0))

    async def scenario():
        broker = build(load_config(conf))
        async with api(broker):
            a, c = _ctx(pki.dir, "a"), _ctx(pki.dir, "c")
            flood = await asyncio.gather(*(_send(port, a, "POST", "/v1/messages",
                                                 heartbeat("a", i)) for i in range(30)))
            calm = [await _send(port, c, "POST", "/v1/messages", heartbeat("c", i))
                    for i in range(3)]
            elsewhere = await _send(port, a, "GET", "/v1/other")  # any path counts
            return flood, calm, elsewhere, broker.store.message_count()

    flood, calm, elsewhere, remembered = asyncio.run(scenario())
    assert elsewhere[0] == 429 and elsewhere[2]["code"] == "rate_limited"
    statuses = sorted(status for status, _h, _b in flood)
    assert statuses.count(200) == 5 and statuses.count(429) == 25, statuses
    for status, headers, body in flood:
        if status == 429:
            assert body["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
            assert "too many requests from peer a: the limit is 0.5 a second (bursts of 5)" \
                in body["error"]
    assert [status for status, _h, _b in calm] == [200, 200, 200]
    assert remembered == 5 + 3  # a refused request is not read, let alone stored
