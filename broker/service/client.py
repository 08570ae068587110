"""Calls to peer brokers over mutual TLS, with the peer's certificate pinned."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from broker.negotiation.messages import Message, MessageError, encode, parse_json
from broker.service.config import Peer
from broker.service.tls import fingerprint_der

log = logging.getLogger("broker.client")

#: The largest answer read from a peer (an offer of thousands of hosts, or a heartbeat's
#: answer listing every contract kept with us, fits many times over).
MAX_REPLY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    status: int  # HTTP status; 0 when the peer could not be reached
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        if self.ok:
            return ""
        text = self.body.get("error", "")
        if not isinstance(text, str):
            return f"HTTP {self.status}, without an error text"
        return text[:500]


class PinMismatch(aiohttp.ClientConnectionError):
    """The server's certificate is not the one pinned for this peer."""


class PinnedConnector(aiohttp.TCPConnector):
    """A connector that, after each TLS handshake, checks the server's certificate pin."""

    def __init__(self, peer: Peer, seen: Callable[[str, bytes], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._peer = peer
        self._seen = seen

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        proto = await super()._create_connection(req, traces, timeout)
        transport = proto.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        got = fingerprint_der(der) if der else "none"
        if got not in self._peer.pins:
            proto.close()
            raise PinMismatch(
                f"peer {self._peer.name} presented certificate {got}, but "
                f"{' or '.join(self._peer.pins)} is pinned; refusing to talk to it"
            )
        if self._seen is not None and der:
            self._seen(self._peer.name, der)
        return proto


class PeerClient:
    def __init__(self, ssl_context: ssl.SSLContext, timeout: float = 5.0,
                 seen: Callable[[str, bytes], None] | None = None) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.seen = seen  # called with the peer's name and its certificate after a pin check
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    async def _get_session(self, peer: Peer) -> aiohttp.ClientSession:
        session = self._sessions.get(peer.name)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=PinnedConnector(peer, self.seen, ssl=self.ssl_context, limit_per_host=4),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
            self._sessions[peer.name] = session
        return session

    def renew(self) -> None:
        """After a reload (new certificate, pins or CAs): the next calls open new connections
        with them; calls in flight finish on the old sessions, closed after the timeout."""
        old, self._sessions = list(self._sessions.values()), {}

        async def close_later() -> None:
            try:
                await asyncio.sleep(self.timeout + 1)
            finally:
                for session in old:
                    await session.close()

        if old:
            task = asyncio.get_running_loop().create_task(close_later())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
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
                body = await _read_answer(resp)
                reply = Reply(resp.status, body)
                if resp.status >= 400:
                    log.warning("%s %s -> %s: %s", peer.name, message.TYPE, resp.status,
                                reply.error)
                return reply
        except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            text = str(exc) or type(exc).__name__
            log.warning("%s unreachable for %s: %s", peer.name, message.TYPE, text)
            return Reply(0, {"error": f"peer {peer.name} unreachable: {text}"})


async def _read_answer(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The peer's JSON object, or ``{"error": ...}`` saying why its answer is not one (too
    large, not UTF-8, not JSON, not an object); never raises for what the peer sent."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_REPLY:
            return {"error": f"peer's answer is over {MAX_REPLY} bytes; not read"}
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return {"error": "peer's answer is not UTF-8"}
    except MessageError as exc:
        text = raw[:300].decode("utf-8", errors="replace")
        return {"error": f"peer's answer is not JSON ({exc.reason}): {text}"}
    if not isinstance(body, dict):
        return {"error": "peer answered with something other than a JSON object"}
    return body
