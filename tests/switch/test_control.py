"""Control protocol (sans-I/O) and the Prometheus exposition."""

from __future__ import annotations

import json

from violin.control import ControlHandler
from violin.core import Settings, Switch
from violin.metrics import exposition, registry_for
from violin.peers import Peer


def handler(reload=None):
    sw = Switch(Settings(5, 1, bytes(32)), [Peer("h2", "10.201.0.2", 5300)])
    reg = registry_for(sw, "red")
    return sw, ControlHandler(sw, lambda: exposition(reg), reload, default_port=5300)


def ask(h, obj) -> dict:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return json.loads(h.handle(raw))


def test_add_list_remove_peers():
    sw, h = handler()
    assert ask(h, {"verb": "peer-add", "name": "vm7", "address": "10.201.0.70"}) == {"changed": True, "ok": True}
    assert ask(h, {"verb": "peer-add", "name": "vm7", "address": "10.201.0.70"})["changed"] is False
    names = [(p["name"], p["port"], p["origin"]) for p in ask(h, {"verb": "peers"})["peers"]]
    assert names == [("h2", 5300, "config"), ("vm7", 5300, "runtime")]
    assert ask(h, {"verb": "peer-remove", "peer": "10.201.0.70:5300"})["changed"] is True
    assert ask(h, {"verb": "peer-remove", "peer": "h2"})["changed"] is True
    assert len(sw.peers) == 0


def test_bad_requests_say_what_is_wrong_and_change_nothing():
    sw, h = handler()
    for req, words in [
        (b"not json", "not JSON"),
        ({"verb": "explode"}, "verb is one of"),
        ([1, 2], "JSON object"),
        ({"verb": "peer-add", "name": "x", "address": "10.201.0.9", "port": 0}, "port must be"),
        ({"verb": "peer-add", "name": "", "address": "10.201.0.9"}, "name must be"),
        ({"verb": "peer-add", "name": "x", "address": "::1"}, "IPv6"),
        ({"verb": "peer-add", "name": "x", "address": "10.201.0.2"}, "already belongs"),
        ({"verb": "peer-remove"}, "needs \"peer\""),
        ({"verb": "reload"}, "without a config file"),
        (b"\xff\xfe", "not JSON"),
    ]:
        answer = ask(h, req)
        assert answer["ok"] is False and words in answer["error"], (req, answer)
    assert [p.name for p in sw.peers.list()] == ["h2"]


def test_stats_fdb_and_metrics():
    _, h = handler()
    stats = ask(h, {"verb": "stats"})["stats"]
    assert stats["peers"] == 1 and stats["drops"]["replay"] == 0
    assert ask(h, {"verb": "fdb"})["fdb"] == []
    text = ask(h, {"verb": "metrics"})["text"]
    assert 'violin_drops_total{network="red",reason="auth"} 0.0' in text
    assert 'violin_peers{network="red"} 1.0' in text
    assert 'violin_frames_total{direction="from_tap",network="red"} 0.0' in text


def test_reload_is_delegated():
    _, h = handler(reload=lambda: {"added": ["h9"], "removed": [], "needs_restart": []})
    assert ask(h, {"verb": "reload"}) == {"ok": True, "added": ["h9"], "removed": [], "needs_restart": []}
