"""The broker's HTTP API: peer messages over mutual TLS, and a local status listener.

``POST /v1/messages`` takes one JSON message. Before anything changes, the request must pass,
in order (each failure is a 4xx whose JSON ``error`` names the reason, and changes nothing):

1. a client certificate (401), signed by the deployment CA (else the handshake fails);
2. pinned in this broker's ``peers`` (403 unknown peer);
3. a body within the size limit (413) that decodes as a valid message (400);
4. ``sender`` equal to the peer the certificate belongs to (403), ``recipient`` this domain
   (400);
5. an ``id`` not seen before; a repeat with the same content gets the first answer again
   (marked ``duplicate``), a repeat with other content a 409.

The status listener (plain HTTP, bind it to localhost) serves ``/metrics`` and ``/status``.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from broker.negotiation.messages import MAX_BODY, MessageError, decode
from broker.service.tls import fingerprint_der

if TYPE_CHECKING:
    from broker.service.broker import Broker

log = logging.getLogger("broker.api")


def _error(status: int, reason: str, code: str) -> web.Response:
    return web.json_response({"error": reason, "code": code}, status=status)


def peer_app(broker: Broker) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY + 1)
    metrics = broker.metrics

    def reject(status: int, reason: str, code: str) -> web.Response:
        metrics.rejected.labels(reason=code).inc()
        log.warning("refused (%s %s): %s", status, code, reason)
        return _error(status, reason, code)

    async def messages(request: web.Request) -> web.Response:
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if der is None:
            return reject(401, "client certificate required: present this deployment's "
                               "domain certificate", "no_certificate")
        fp = fingerprint_der(der)
        peer = broker.config.peer_by_fingerprint(fp)
        if peer is None:
            return reject(403, f"unknown peer: certificate {fp} is not pinned by broker "
                               f"{broker.config.domain}; add it to peers in its config",
                          "unknown_peer")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = b"x" * (MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return reject(413, f"message is over {MAX_BODY} bytes, the limit", "too_large")
        try:
            message = decode(body)
        except MessageError as exc:
            return reject(400, exc.reason, "malformed")
        if message.sender != peer.name:
            return reject(403, f"sender {message.sender!r} does not match the certificate "
                               f"of peer {peer.name!r}", "sender_mismatch")
        if message.recipient != broker.config.domain:
            return reject(400, f"recipient {message.recipient!r}: this is the broker of "
                               f"{broker.config.domain!r}", "wrong_recipient")
        digest = hashlib.sha256(body).hexdigest()
        seen = broker.store.seen(message.id)
        if seen is not None:
            if seen.digest != digest or seen.sender != peer.name:
                return reject(409, f"message id {message.id} was used before with other "
                                   "content; use a fresh id", "id_reused")
            metrics.messages.labels(type=message.TYPE, status=str(seen.status)).inc()
            return web.json_response({**seen.response, "duplicate": True}, status=seen.status)
        status, reply = await broker.handle(message)
        metrics.messages.labels(type=message.TYPE, status=str(status)).inc()
        if status < 500:
            broker.store.remember(message.id, peer.name, message.TYPE, digest, broker.clock(),
                                  status, reply)
        return web.json_response(reply, status=status)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"domain": broker.config.domain, "ok": True})

    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/health", health)
    return app


def status_app(broker: Broker) -> web.Application:
    app = web.Application()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=broker.metrics.render(),
                            content_type="text/plain", charset="utf-8")

    async def status(request: web.Request) -> web.Response:
        return web.json_response(broker.status())

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app
