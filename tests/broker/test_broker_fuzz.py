"""Fuzzing a live broker: no input gets a 5xx, resets a connection, stops the broker, or
changes its store in any way the valid messages among the inputs do not explain.

The broker is a real ``viocluster broker run`` process (lender ``b``, on its own real Slurm);
peer ``a`` sends it, over real mutual TLS with a's valid certificate and a few keep-alive
connections at once, ``VIOCLUSTER_FUZZ_COUNT`` requests (default 10,000) from the seeded
generator of ``fuzz_messages.py`` (``VIOCLUSTER_FUZZ_SEED``): valid messages of every kind,
mutations of them, and junk. A short list of malformed HTTP is then sent over raw TLS sockets.

The store is checked against the answers: every message id it remembers is one of a valid
message answered by the broker (not a 429, not a reused id), with the status that answer had;
every contract it holds is one an offer answered; every proposal it dropped, a decline or
return answered "closed" dropped; every step of every contract, an answer to a valid accept,
heartbeat or return explains. The lending hosts drained in Slurm are exactly the open
contracts' hosts.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import sqlite3
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from broker.negotiation import messages as m
from broker.negotiation.contracts import ContractState, Role
from broker.service.store import Store
from broker_harness import BrokerProcess, free_port, make_pki, standin_vars, write_config
from broker_slurm import reset
from fuzz_messages import KINDS, Case, Generator

pytestmark = [pytest.mark.root, pytest.mark.slow]
S = ContractState

COUNT = int(os.environ.get("VIOCLUSTER_FUZZ_COUNT", "10000"))
SEED = int(os.environ.get("VIOCLUSTER_FUZZ_SEED", "20260611"))
CONNECTIONS = int(os.environ.get("VIOCLUSTER_FUZZ_CONNECTIONS", "4"))


@dataclass
class Result:
    case: Case
    expected: m.Message | None
    status: int  # 0: no answer (the error says why)
    answer: Any
    headers: dict[str, str]
    error: str = ""


def _ctx(pki_dir: Path, who: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki_dir / "ca.crt"))
    ctx.load_cert_chain(pki_dir / f"{who}.crt", pki_dir / f"{who}.key")
    return ctx


@pytest.fixture
def lender(tmp_path, slurm_b):
    """Broker b as a process, lending n1 and n2 of its Slurm, with peer a pinned."""
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    files = tmp_path / "fake"
    files.mkdir()
    (files / "vms").touch()
    conf = write_config(tmp_path / "b.yml", "b", port, pki, {"a": free_port()}, slurm_b, {
        "executor": {"extravars": standin_vars(slurm_b, files)},
        # nothing may change the store but the messages: no offer expires, no peer is lost
        "interval_s": 5, "offer_ttl_s": 86400, "peer_lost_timeout_s": 86400,
        # high enough that the fuzz is not limited; a 429 would still be an expected answer
        "rate_limit": {"per_s": 2000, "burst": 2000},
    })
    proc = BrokerProcess("b", conf, port, tmp_path / "b.log")
    proc.start()
    yield proc, pki
    proc.stop()
    reset(slurm_b)


async def _send_all(port: int, ctx: ssl.SSLContext, gen: Generator, count: int,
                    connections: int) -> tuple[list[Result], int]:
    """``count`` cases over ``connections`` keep-alive connections at once; the results and
    how many TLS connections were opened."""
    results: list[Result] = []
    opened = 0
    left = count

    async def on_connection(*_args: Any) -> None:
        nonlocal opened
        opened += 1

    async def worker() -> None:
        nonlocal left
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_connection)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=1),
            timeout=aiohttp.ClientTimeout(total=120), trace_configs=[trace],
            auto_decompress=False,
        ) as session:
            while left > 0:
                left -= 1
                case = gen.next()
                expected = case.expected()
                url = URL(f"https://127.0.0.1:{port}{case.path}", encoded=True)
                try:
                    async with session.request(
                        case.method, url, data=case.body, headers=case.headers,
                        chunked=True if case.chunked else None,
                        skip_auto_headers=() if "Content-Type" in case.headers
                        else ("Content-Type",),
                    ) as resp:
                        raw = await resp.read()
                        status, headers = resp.status, dict(resp.headers)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    results.append(Result(case, expected, 0, None, {}, repr(exc)))
                    continue
                try:
                    answer = json.loads(raw) if raw else None
                except ValueError:
                    answer = raw[:200]
                gen.know.learn(expected, status, answer)
                results.append(Result(case, expected, status, answer, headers))

    await asyncio.gather(*(worker() for _ in range(connections)))
    return results, opened


# Malformed HTTP, written to a raw TLS socket: the broker answers 4xx (or closes), never 5xx.
RAW_HTTP = (
    b"GARBAGE\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nContent-Length: x\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n{}{}",
    (b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    (b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nContent-Encoding: gzip\r\n"
     b"Content-Length: 8\r\n\r\nnot gzip"),
    (b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nContent-Encoding: br\r\n"
     b"Content-Length: 8\r\n\r\nnot brot"),
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nX: " + b"h" * 20000 + b"\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
    b"POST /" + b"p" * 10000 + b" HTTP/1.1\r\nHost: b\r\n\r\n",
    b"POST /v1/messages HTTP/9.9\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
    b"POST /v1/messages\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nBad Header\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nX: \x00\x01\r\n\r\n",
    b"\x16\x03\x01\x00\x05hello",
    b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nContent-Length: 10\r\n\r\n{",  # then closes
    b"\xff\xfe\r\n\r\n",
)


def _raw_http(port: int, ctx: ssl.SSLContext, request: bytes) -> str:
    """The status line the broker answers ``request`` with ('' if it closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain, \
            ctx.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
        tls.sendall(request)
        if request.endswith(b"{"):  # a body cut short: the client goes away
            return ""
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, ssl.SSLError, ConnectionError):
            pass
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def _explained(results: list[Result]) -> dict[str, Any]:
    """What the store may hold, from the answers to the valid messages."""
    remembered: dict[str, tuple[str, int]] = {}
    offered: set[str] = set()
    dropped_by: collections.Counter[str] = collections.Counter()  # 'closed' answers
    agreed: set[str] = set()
    hb: dict[str, set[str]] = collections.defaultdict(set)
    ended: set[str] = set()  # a return or a heartbeat saying closed/failed was answered 200
    for r in results:
        msg, answer = r.expected, r.answer
        if msg is None or not isinstance(answer, dict) or r.status == 429:
            continue
        if answer.get("code") == "id_reused":
            continue
        if not answer.get("duplicate"):
            remembered[msg.id] = (msg.TYPE, r.status)
        if r.status != 200:
            continue
        reply = answer.get("reply")
        if isinstance(msg, m.Request) and isinstance(reply, dict) and reply.get("type") == "offer":
            offered.add(reply["contract_id"])
        elif isinstance(msg, (m.Decline, m.Return)) and answer.get("state") == "closed" \
                and not answer.get("duplicate"):
            dropped_by[msg.contract_id] += 1
        if isinstance(msg, m.Accept) and answer.get("state") == "agreed":
            agreed.add(msg.contract_id)
        if isinstance(msg, m.Return):
            ended.add(msg.contract_id)
        if isinstance(msg, m.Heartbeat):
            for cid, state in msg.contracts:
                hb[cid].add(state)
                if state in ("closed", "failed"):
                    ended.add(cid)
    return {"remembered": remembered, "offered": offered, "dropped_by": dropped_by,
            "agreed": agreed, "heartbeat": hb, "ended": ended}


def _wait_settled(proc: BrokerProcess, timeout: float = 180) -> None:
    """Until no contract is reclaiming (a return or a peer's 'closed' runs reclaim.yml)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(c.state is S.RECLAIMING for c in proc.contracts()):
            return
        time.sleep(0.5)
    raise AssertionError(f"contracts still reclaiming after {timeout} s:\n"
                         f"{proc.log.read_text()[-3000:]}")


def test_no_input_gets_a_5xx_or_changes_the_store_unexplained(lender, slurm_b):
    proc, pki = lender
    ctx = _ctx(pki.dir, "a")
    gen = Generator(SEED)
    t0 = time.monotonic()
    results, opened = asyncio.run(_send_all(proc.port, ctx, gen, COUNT, CONNECTIONS))
    raw_lines = [_raw_http(proc.port, ctx, request) for request in RAW_HTTP]
    took = time.monotonic() - t0

    statuses = collections.Counter(r.status for r in results)
    labels = collections.Counter(r.case.label.split(":")[0] for r in results)
    valid = sum(1 for r in results if r.expected is not None)
    summary = (f"fuzz: {len(results)} requests (seed {SEED}, {CONNECTIONS} connections, "
               f"{opened} opened) + {len(RAW_HTTP)} raw, {took:.1f} s "
               f"({len(results) / took:.0f}/s); {valid} valid messages; statuses "
               f"{dict(sorted(statuses.items()))}; cases {dict(sorted(labels.items()))}; "
               f"raw status lines {collections.Counter(x[:12] for x in raw_lines)}")
    print(summary)
    assert len(results) == COUNT
    if COUNT >= 1000:  # valid messages of every kind were among them
        assert {r.expected.TYPE for r in results if r.expected} == set(KINDS), summary

    # no reset, abort or timeout; no 5xx; the broker still runs and answers
    errors = [(r.case.label, r.case.method, r.case.path[:40], r.error) for r in results
              if r.status == 0]
    assert not errors, f"{len(errors)} requests got no answer, e.g. {errors[:5]}\n{summary}"
    fives = [(r.case.label, r.status, r.answer, r.case.body[:200]) for r in results
             if r.status >= 500]
    assert not fives, f"{len(fives)} x 5xx, e.g. {fives[:3]}\n{summary}"
    assert not [(req[:80], x) for req, x in zip(RAW_HTTP, raw_lines) if x[9:10] == "5"]
    assert proc.proc is not None and proc.proc.poll() is None, proc.log.read_text()[-3000:]
    assert "Traceback" not in proc.log.read_text(), proc.log.read_text()[-5000:]
    health = _raw_http(proc.port, ctx, b"GET /v1/health HTTP/1.1\r\nHost: b\r\n\r\n")
    assert health.startswith("HTTP/1.1 200"), health

    # every refusal is a 4xx that says what is wrong; every 2xx is a valid message's
    for r in results:
        if r.expected is None:
            assert 400 <= r.status < 500, (r.case.label, r.status, r.answer, r.case.body[:200])
            if r.case.method != "HEAD":
                assert isinstance(r.answer, dict) and isinstance(r.answer.get("error"), str) \
                    and r.answer["error"] and isinstance(r.answer.get("code"), str), \
                    (r.case.label, r.status, r.answer)
        if r.status == 429:
            assert int(r.headers["Retry-After"]) >= 1
    assert all(r.expected is not None for r in results if 200 <= r.status < 300)

    # the store: exactly what the answers to the valid messages explain
    _wait_settled(proc)
    known = _explained(results)
    db = sqlite3.connect(f"file:{proc.db}?mode=ro", uri=True)
    try:
        stored = {row[0]: (row[1], row[2]) for row in
                  db.execute("SELECT id, type, status FROM messages")}
        senders = {row[0] for row in db.execute("SELECT DISTINCT sender FROM messages")}
    finally:
        db.close()
    assert senders <= {"a"}
    missing = sorted(set(known["remembered"]) - set(stored))[:5]
    extra = sorted(set(stored) - set(known["remembered"]))[:5]
    assert not missing and not extra, f"answered but not stored: {missing}; stored: {extra}"
    assert stored == known["remembered"]

    store = Store(proc.db)
    try:
        contracts = {c.id: c for c in store.contracts()}
        history = {cid: [t.to_state for t in store.history(cid)] for cid in contracts}
        refused = {(x.peer, x.role): x.count for x in store.refusals()}
    finally:
        store.close()
    assert all(c.role is Role.LENDER and c.peer == "a" for c in contracts.values())
    assert set(contracts) <= known["offered"], set(contracts) - known["offered"]
    # a proposal dropped (declined or returned before agreement) is counted, not kept; the
    # same id may be offered again after. Each drop was answered 'closed' (so was a decline
    # of a contract closed already: the answers bound the count, they do not fix it).
    dropped = known["offered"] - set(contracts)
    assert dropped <= set(known["dropped_by"]), dropped - set(known["dropped_by"])
    drops = refused.get(("a", Role.LENDER), 0)
    most = sum(n for cid, n in known["dropped_by"].items() if cid in known["offered"])
    assert len(dropped) <= drops <= most, (drops, dropped, most)
    for cid, steps in history.items():
        c = contracts[cid]
        assert steps[0] is S.PROPOSED, (cid, steps)
        states = set(steps)
        assert (S.AGREED in states) == (cid in known["agreed"]), (cid, steps)
        if S.PROVISIONING in states:
            assert known["heartbeat"][cid] & {"provisioning", "active"}, (cid, steps)
        if S.ACTIVE in states:
            assert "active" in known["heartbeat"][cid], (cid, steps)
        if S.RECLAIMING in states:
            assert cid in known["ended"], (cid, steps)
        if c.state.final:
            assert S.RECLAIMING in states, (cid, steps)
        assert c.state is not S.RECLAIMING
    # the hosts drained as lent are exactly those of the open agreements
    lent = {line.split("|")[0] for line in
            slurm_b.run("sinfo", "-N", "-h", "-o", "%N|%E").split("\n")
            if "viocluster-lent" in line}
    held = {h for c in contracts.values() if c.state in (S.AGREED, S.PROVISIONING, S.ACTIVE)
            for h in c.host_names}
    assert lent == held, (lent, held)
