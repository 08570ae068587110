"""Talk to this broker's peers the way the broker does, and the ways it must refuse.

Run on a broker's host with the broker's own Python: ``peer_probe.py CONFIG``. Prints one JSON
object on one line; molecule/broker/verify.yml checks it. Per peer:

* ``heartbeat``: a heartbeat with this domain's certificate, the peer's pinned (the real path);
* ``no_cert``: the same request without a client certificate;
* ``rogue``: a certificate with this domain's name from a CA of its own (not the deployment's);
* ``wrong_pin``: the real client, but expecting another certificate from the peer.

``self``: this domain's certificate shown to its own broker, which does not pin it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from broker.negotiation.messages import Heartbeat, encode, new_id
from broker.service.client import PeerClient
from broker.service.config import Peer, load_config
from broker.service.tls import TlsFiles, client_context, fingerprint_pem, make_ca, make_domain_cert


def heartbeat(sender: str, recipient: str) -> Heartbeat:
    return Heartbeat(id=new_id("m"), sender=sender, recipient=recipient, sent_at=time.time())


async def send(tls: TlsFiles, peer: Peer, sender: str) -> dict[str, Any]:
    client = PeerClient(client_context(tls, "probe"), timeout=10)
    try:
        reply = await client.send(peer, heartbeat(sender, peer.name))
    finally:
        await client.close()
    return {"status": reply.status, "body": reply.body}


def without_cert(ca: Path, peer: Peer, sender: str) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(
        f"{peer.url}/v1/messages", data=encode(heartbeat(sender, peer.name)),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return {"status": resp.status, "body": json.loads(resp.read())}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": json.loads(exc.read())}


async def main(config_path: Path) -> dict[str, Any]:
    config = load_config(config_path)
    own_fp = fingerprint_pem(config.tls.cert.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        rogue = make_domain_cert(make_ca("rogue"), config.domain, [config.listen.host])
        rogue_tls = TlsFiles(Path(tmp, "r.crt"), Path(tmp, "r.key"), config.tls.ca)
        rogue.write(rogue_tls.cert, rogue_tls.key)
        peers = {}
        for peer in config.peers.values():
            peers[peer.name] = {
                "heartbeat": await send(config.tls, peer, config.domain),
                "no_cert": without_cert(config.tls.ca, peer, config.domain),
                "rogue": await send(rogue_tls, peer, config.domain),
                "wrong_pin": await send(config.tls, Peer(peer.name, peer.url, own_fp),
                                        config.domain),
            }
    me = Peer(config.domain, f"https://{config.listen.host}:{config.listen.port}", own_fp)
    return {"domain": config.domain, "peers": peers,
            "self": await send(config.tls, me, config.domain)}


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # the client's warnings: the refusals are expected
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
