"""The broker's HTTP API: peer messages over mutual TLS, and a local status listener.

``POST /v1/messages`` takes one JSON message. Before anything changes, the request must pass,
in order (each failure is a 4xx whose JSON ``error`` names the reason, and changes nothing):

1. within the rate limit of the client certificate (429, with ``Retry-After``; checked
   for every request with a certificate, whatever its path; :mod:`.ratelimit`);
2. a client certificate (401), signed by the deployment CA (else the handshake fails);
3. pinned in this broker's ``peers`` (403 unknown peer);
4. a body within the size limit (413) that decodes as a valid message (400);
5. ``sender`` equal to the peer the certificate belongs to (403), ``recipient`` this domain
   (400);
6. an ``id`` not seen before; a repeat with the same content gets the first answer again
   (marked ``duplicate``), a repeat with other content a 409. A repeat that arrives while the
   first is still being handled waits for it, and is then answered as a repeat.

Any other path or method gets a JSON 404 or 405 that names what is served. No input gives a
5xx: the only one a peer can see is a 503 while this broker's scheduler does not answer (and a
500 from a bug, logged with its traceback).

The status listener (plain HTTP, bind it to localhost) serves ``/metrics`` and ``/status``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from broker.negotiation.messages import MAX_BODY, MessageError, decode
from broker.service.ratelimit import RateLimiter
from broker.service.tls import fingerprint_der

if TYPE_CHECKING:
    from broker.service.broker import Broker

log = logging.getLogger("broker.api")


def _error(status: int, reason: str, code: str) -> web.Response:
    return web.json_response({"error": reason, "code": code}, status=status)


def _client_der(request: web.Request) -> bytes | None:
    sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return der or None


def _fingerprint(request: web.Request) -> str | None:
    """The pin of the client's certificate, or None if it showed none."""
    der = _client_der(request)
    return fingerprint_der(der) if der else None


def _http_error_text(exc: BaseException) -> str | None:
    """One line naming what is wrong with a request aiohttp could not parse or decode, or
    None when ``exc`` is not such an error (the client's fault, not ours)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, HttpProcessingError):
            text = " ".join(str(seen.message).split())[:200] or type(seen).__name__
            return f"{seen.code}: {text}"
        seen = seen.__cause__
    if isinstance(exc, web.RequestPayloadError):
        return " ".join(str(exc).split())[:200]
    return None


class _MalformedHttpWithoutTraceback(logging.Filter):
    """aiohttp logs a request it cannot parse (bad Content-Length, chunking, encoding, ...)
    with a traceback at ERROR. The client is at fault: log one line at WARNING instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        text = _http_error_text(exc) if exc is not None else None
        if text is not None:
            if record.msg == "Unhandled exception":
                return False  # a body that did not decode: the handler answered and logged it
            remote = f" from {record.args[0]}" if isinstance(record.args, tuple) and \
                record.args else ""
            record.msg = f"refused malformed HTTP{remote}: {text}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _quiet_malformed_http() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedHttpWithoutTraceback) for f in server_log.filters):
        server_log.addFilter(_MalformedHttpWithoutTraceback())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _errors_as_json(served: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Answer aiohttp's own errors (no such path, wrong method, ...) as the API's JSON errors,
    and a bug in a handler as a JSON 500 whose traceback goes to the log."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 404:
                reason, code = f"no such path {request.path[:200]!r}; {served}", "not_found"
            elif exc.status == 405:
                allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
                reason = (f"method {request.method[:20]!r} is not allowed on "
                          f"{request.path[:200]!r}; "
                          f"use {allowed or 'another'}")
                code = "method_not_allowed"
            else:
                reason, code = exc.reason, exc.reason.lower().replace(" ", "_")
            response = _error(exc.status, reason, code)
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception:
            log.exception("internal error answering %s %s", request.method, request.path[:200])
            return _error(500, "internal error in this broker; its log has the details",
                          "internal")

    return middleware


def peer_app(broker: Broker, clock: Callable[[], float] | None = None) -> web.Application:
    """The peer API; ``clock`` (monotonic seconds) times the rate limits."""
    _quiet_malformed_http()
    metrics = broker.metrics
    limit = broker.config.rate_limit
    limiter = RateLimiter(limit, clock) if clock is not None else RateLimiter(limit)
    in_flight: dict[str, asyncio.Event] = {}  # message id -> set when its answer is stored

    def reject(status: int, reason: str, code: str, quiet: bool = False) -> web.Response:
        metrics.rejected.labels(reason=code).inc()
        log.log(logging.DEBUG if quiet else logging.WARNING, "refused (%s %s): %s", status,
                code, reason)
        return _error(status, reason, code)

    @web.middleware
    async def rate_limited(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request with a client certificate, to any path, takes a token of that
        certificate's bucket; without one it is refused before its body is read."""
        fp = _fingerprint(request)
        if fp is None:
            return await handler(request)
        decision = limiter.check(fp)
        if decision.allowed:
            return await handler(request)
        wait = max(1, math.ceil(decision.retry_after_s))
        peer = broker.config.peer_by_fingerprint(fp)
        who = f"peer {peer.name}" if peer is not None else f"certificate {fp}"
        response = reject(
            429, f"too many requests from {who}: the limit is {limit.per_s:g} a second "
                 f"(bursts of {limit.burst}); retry after {wait} s", "rate_limited",
            quiet=not decision.first_refusal)
        response.headers["Retry-After"] = str(wait)
        return response

    app = web.Application(
        client_max_size=MAX_BODY + 1,
        middlewares=[_errors_as_json("peers POST messages to /v1/messages"), rate_limited],
    )

    async def messages(request: web.Request) -> web.Response:
        fp = _fingerprint(request)
        if fp is None:
            return reject(401, "client certificate required: present this deployment's "
                               "domain certificate", "no_certificate")
        peer = broker.config.peer_by_fingerprint(fp)
        if peer is None:
            return reject(403, f"unknown peer: certificate {fp} is not pinned by broker "
                               f"{broker.config.domain}; add it to peers in its config",
                          "unknown_peer")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = b"x" * (MAX_BODY + 1)
        except ConnectionError:  # the client left before its body arrived: no one to answer
            return reject(400, "the connection closed before the whole body arrived",
                          "bad_body", quiet=True)
        except web.RequestPayloadError as exc:  # a body that is cut short or does not decode
            return reject(400, f"cannot read the request body ({_http_error_text(exc)}); send "
                               "the message as plain UTF-8 JSON, with a correct length and no "
                               "Content-Encoding", "bad_body")
        if len(body) > MAX_BODY:
            return reject(413, f"message is over {MAX_BODY} bytes, the limit; send one message "
                               "at a time", "too_large")
        try:
            message = decode(body)
        except MessageError as exc:
            return reject(400, exc.reason, "malformed")
        if message.sender != peer.name:
            return reject(403, f"sender {message.sender!r} does not match the certificate "
                               f"of peer {peer.name!r}", "sender_mismatch")
        der = _client_der(request)
        if der is not None:
            broker.certs.seen(peer.name, der)
        if message.recipient != broker.config.domain:
            return reject(400, f"recipient {message.recipient!r}: this is the broker of "
                               f"{broker.config.domain!r}", "wrong_recipient")
        digest = hashlib.sha256(body).hexdigest()
        while message.id in in_flight:  # the same id, still being handled: wait for its answer
            await in_flight[message.id].wait()
        seen = broker.store.seen(message.id)
        if seen is not None:
            if seen.digest != digest or seen.sender != peer.name:
                return reject(409, f"message id {message.id} was used before with other "
                                   "content; use a fresh id", "id_reused")
            metrics.messages.labels(type=message.TYPE, status=str(seen.status)).inc()
            return web.json_response({**seen.response, "duplicate": True}, status=seen.status)
        in_flight[message.id] = asyncio.Event()
        try:
            status, reply = await broker.handle(message)
            metrics.messages.labels(type=message.TYPE, status=str(status)).inc()
            if status < 500:
                broker.store.remember(message.id, peer.name, message.TYPE, digest,
                                      broker.clock(), status, reply)
        finally:
            in_flight.pop(message.id).set()
        return web.json_response(reply, status=status)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"domain": broker.config.domain, "ok": True})

    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/health", health)
    return app


def status_app(broker: Broker) -> web.Application:
    app = web.Application(middlewares=[_errors_as_json("this listener serves GET /metrics "
                                                       "and GET /status")])

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=broker.metrics.render(),
                            content_type="text/plain", charset="utf-8")

    async def status(request: web.Request) -> web.Response:
        return web.json_response(broker.status())

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app
