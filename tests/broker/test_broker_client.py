"""What a peer answers is input too: the client reads any answer into a JSON object or an
error that says what was wrong with it, and never raises (loopback HTTP, no certificates)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from broker.service.client import MAX_REPLY, Reply, _read_answer
from broker_harness import free_port

ANSWERS: dict[str, tuple[bytes, str]] = {
    "object": (b'{"state": "active"}', ""),
    "huge-int": (b'{"state": ' + b"1" + b"0" * 400 + b"}", ""),
    "digits": (b'{"state": ' + b"9" * 5000 + b"}", "thousands of digits"),
    "deep": (b"[" * 60_000, "nested too deeply"),
    "twice": (b'{"state": "a", "state": "b"}', "appears twice"),
    "latin1": ("{\"error\": \"d\u00e9j\u00e0\"}".encode("latin-1"), "not UTF-8"),
    "html": (b"<html>502 Bad Gateway</html>", "not JSON"),
    "array": (b"[1, 2]", "other than a JSON object"),
    "empty": (b"", "not JSON"),
    "large": (b'{"x": "' + b"y" * (MAX_REPLY + 10) + b'"}', "over"),
}


def _answers():
    async def scenario():
        app = web.Application()

        async def answer(request: web.Request) -> web.Response:
            return web.Response(body=ANSWERS[request.match_info["name"]][0],
                                content_type="application/json")

        app.router.add_get("/{name}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        got = {}
        try:
            async with aiohttp.ClientSession() as session:
                for name in ANSWERS:
                    async with session.get(f"http://127.0.0.1:{port}/{name}") as resp:
                        got[name] = await _read_answer(resp)
        finally:
            await runner.cleanup()
        return got

    return asyncio.run(scenario())


def test_any_answer_becomes_an_object_or_an_error_saying_why():
    got = _answers()
    assert got["object"] == {"state": "active"}
    assert got["huge-int"] == {"state": 10**400}  # read; the message check refuses it later
    for name, (_body, words) in ANSWERS.items():
        if words:
            assert set(got[name]) == {"error"} and words in got[name]["error"], (name, got[name])
            assert len(got[name]["error"]) < 600


@pytest.mark.parametrize(("body", "error"), [
    ({"error": "busy"}, "busy"),
    ({"error": ["not", "text"]}, "HTTP 409, without an error text"),
    ({"error": "x" * 10_000}, "x" * 500),
    ({}, ""),
])
def test_a_reply_error_is_short_text_whatever_the_peer_sent(body, error):
    assert Reply(409, body).error == error
    assert Reply(200, body).error == ""
    json.dumps(Reply(409, body).error)
