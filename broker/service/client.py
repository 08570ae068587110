"""Calls to peer brokers over mutual TLS, with the peer's certificate pinned."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from broker.negotiation.messages import Message, encode
from broker.service.config import Peer
from broker.service.tls import fingerprint_der

log = logging.getLogger("broker.client")


@dataclass(frozen=True)
class Reply:
    status: int  # HTTP status; 0 when the peer could not be reached
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        return str(self.body.get("error", "")) if not self.ok else ""


class PinMismatch(aiohttp.ClientConnectionError):
    """The server's certificate is not the one pinned for this peer."""


class PinnedConnector(aiohttp.TCPConnector):
    """A connector that, after each TLS handshake, checks the server's certificate pin."""

    def __init__(self, peer: Peer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._peer = peer

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        proto = await super()._create_connection(req, traces, timeout)
        transport = proto.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        got = fingerprint_der(der) if der else "none"
        if got != self._peer.fingerprint:
            proto.close()
            raise PinMismatch(
                f"peer {self._peer.name} presented certificate {got}, but "
                f"{self._peer.fingerprint} is pinned; refusing to talk to it"
            )
        return proto


class PeerClient:
    def __init__(self, ssl_context: ssl.SSLContext, timeout: float = 5.0) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def _get_session(self, peer: Peer) -> aiohttp.ClientSession:
        session = self._sessions.get(peer.name)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=PinnedConnector(peer, ssl=self.ssl_context, limit_per_host=4),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
            self._sessions[peer.name] = session
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def send(self, peer: Peer, message: Message) -> Reply:
        """POST ``message`` to ``peer``; never raises for network or peer errors."""
        session = await self._get_session(peer)
        try:
            async with session.post(
                f"{peer.url}/v1/messages",
                data=encode(message),
                headers={"Content-Type": "application/json"},
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = {"error": (await resp.text())[:300]}
                if not isinstance(body, dict):
                    body = {"error": "peer answered with something other than a JSON object"}
                if resp.status >= 400:
                    log.warning("%s %s -> %s: %s", peer.name, message.TYPE, resp.status,
                                body.get("error"))
                return Reply(resp.status, body)
        except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            text = str(exc) or type(exc).__name__
            log.warning("%s unreachable for %s: %s", peer.name, message.TYPE, text)
            return Reply(0, {"error": f"peer {peer.name} unreachable: {text}"})
