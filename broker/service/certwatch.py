"""When the broker's certificates expire: a gauge for each, and a warning well before.

Watched: our own certificate and CA (``tls.cert``, ``tls.ca``), each peer's CA named in the
config (``peers.NAME.ca``), and each peer's certificate once the broker has seen it in a
handshake (the config pins only its fingerprint). The gauge
``viocluster_certificate_expiry_timestamp_seconds{domain,kind}`` is the end of validity in
seconds since the epoch; ``kind`` is ``own``, ``own_ca``, ``peer`` or ``peer_ca``. A certificate
that ends within ``tls.expiry_warning_days`` is logged as a warning at start and once a day.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.service.tls import fingerprint_der, not_after

log = logging.getLogger("broker.certs")

CHECK_EVERY_S = 86400.0


class CertWatch:
    def __init__(self, config: Any, metrics: Any, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.next_check = 0.0
        # (domain, kind) -> (what it is, for the log; when it ends)
        self.ends: dict[tuple[str, str], tuple[str, float]] = {}
        self._peer_fps: dict[str, str] = {}  # peer -> fingerprint of the certificate last seen

    def _set(self, domain: str, kind: str, what: str, end: float) -> None:
        self.ends[(domain, kind)] = (what, end)
        self.metrics.cert_expiry.labels(domain=domain, kind=kind).set(end)

    def _file(self, domain: str, kind: str, path: Path) -> None:
        try:
            self._set(domain, kind, str(path), not_after(path.read_bytes()))
        except (OSError, ValueError) as exc:
            log.warning("cannot read the certificate %s to watch its expiry: %s", path, exc)

    def load(self, config: Any | None = None) -> None:
        """Read the files the config names (at start, and after a reload)."""
        if config is not None:
            self.config = config
        c = self.config
        self._file(c.domain, "own", c.tls.cert)
        self._file(c.domain, "own_ca", c.tls.ca)
        for peer in c.peers.values():
            if peer.ca is not None:
                self._file(peer.name, "peer_ca", peer.ca)

    def seen(self, peer: str, der: bytes) -> None:
        """A peer's certificate passed the pin check (either side of a connection)."""
        fp = fingerprint_der(der)
        if self._peer_fps.get(peer) == fp:
            return
        self._peer_fps[peer] = fp
        try:
            end = not_after(der)
        except ValueError:
            return
        self._set(peer, "peer", f"certificate {fp}", end)
        self._warn(peer, "peer", f"certificate {fp}", end, self.clock())

    def _warn(self, domain: str, kind: str, what: str, end: float, now: float) -> str | None:
        left = end - now
        if left > self.config.cert_warn_days * 86400:
            return None
        when = dt.datetime.fromtimestamp(end, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        whose = {"own": "our certificate", "own_ca": "our CA",
                 "peer": f"peer {domain}'s certificate", "peer_ca": f"peer {domain}'s CA"}[kind]
        if left <= 0:
            text = f"{whose} ({what}) expired at {when}"
        else:
            text = f"{whose} ({what}) expires in {left / 86400:.1f} days, at {when}"
        if kind == "own":
            text += ("; renew it with `viocluster broker certs --renew`, pin the new "
                     "fingerprint at the peers, then reload with SIGHUP")
        elif kind == "own_ca":
            text += "; make a new CA and give its certificate to the peers before then"
        else:
            text += f"; ask {domain}'s administrator to renew it"
        log.log(logging.ERROR if left <= 0 else logging.WARNING, "%s", text)
        return text

    def check(self) -> list[str]:
        """Warn about every certificate ending within the warning time; returns the warnings."""
        now = self.clock()
        self.next_check = now + CHECK_EVERY_S
        found = []
        for (domain, kind), (what, end) in sorted(self.ends.items()):
            text = self._warn(domain, kind, what, end, now)
            if text:
                found.append(text)
        return found

    def due(self) -> bool:
        return self.clock() >= self.next_check
