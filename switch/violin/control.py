"""The control protocol, without I/O: one JSON object per line in, one JSON object per line out.

Requests: ``{"verb": "peers"}``, ``{"verb": "peer-add", "name": N, "address": A, "port": P}``,
``{"verb": "peer-remove", "peer": NAME-or-ADDRESS:PORT}``, ``{"verb": "stats"}``,
``{"verb": "metrics"}`` (Prometheus text), ``{"verb": "fdb"}``, ``{"verb": "reload"}``.
Answers: ``{"ok": true, ...}`` or ``{"ok": false, "error": "what is wrong and what to do"}``.
A bad request changes nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from .peers import Peer, check_peer

log = logging.getLogger("violin.control")
MAX_REQUEST = 64 * 1024
VERBS = ("peers", "peer-add", "peer-remove", "stats", "metrics", "fdb", "reload")


class ControlHandler:
    def __init__(self, switch, metrics_text: Callable[[], str],
                 reload: Callable[[], dict] | None = None, default_port: int = 5300) -> None:
        self.switch = switch
        self.default_port = default_port
        self.metrics_text = metrics_text
        self.reload = reload

    def handle(self, line: bytes) -> bytes:
        try:
            answer = self.dispatch(self.parse(line))
        except ValueError as err:
            answer = {"ok": False, "error": str(err)}
        return (json.dumps(answer, sort_keys=True) + "\n").encode()

    @staticmethod
    def parse(line: bytes) -> dict:
        if len(line) > MAX_REQUEST:
            raise ValueError(f"request longer than {MAX_REQUEST} bytes")
        try:
            request = json.loads(line.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"request is not JSON: {err}") from None
        if not isinstance(request, dict) or request.get("verb") not in VERBS:
            raise ValueError(f"request must be a JSON object whose verb is one of {', '.join(VERBS)}")
        return request

    def dispatch(self, request: dict[str, Any]) -> dict:
        verb = request["verb"]
        sw = self.switch
        if verb == "peers":
            return {"ok": True, "peers": [p.describe() for p in sw.peers.list()]}
        if verb == "peer-add":
            name, address, port = check_peer(request.get("name"), request.get("address"),
                                             request.get("port", self.default_port))
            added = sw.add_peer(Peer(name, address, port, "runtime"))
            if added:
                log.info("peer %s (%s:%d) added over the control socket", name, address, port)
            return {"ok": True, "changed": added}
        if verb == "peer-remove":
            which = request.get("peer")
            if not isinstance(which, str) or not which:
                raise ValueError("peer-remove needs \"peer\": a peer name or ADDRESS:PORT")
            key: Any = which
            host, sep, port = which.rpartition(":")
            if sep and port.isdigit():
                key = (host, int(port))
            gone = sw.remove_peer(key)
            if gone is not None:
                log.info("peer %s (%s:%d) removed over the control socket", gone.name, gone.address,
                         gone.port)
            return {"ok": True, "changed": gone is not None}
        if verb == "stats":
            return {"ok": True, "stats": sw.stats()}
        if verb == "metrics":
            return {"ok": True, "text": self.metrics_text()}
        if verb == "fdb":
            return {"ok": True, "fdb": sw.fdb_entries()}
        if self.reload is None:
            raise ValueError("this daemon was started without a config file; nothing to reload")
        return {"ok": True, **self.reload()}
