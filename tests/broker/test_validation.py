"""The three readers of what people and peers write (policy file, broker config, messages)
share one checker (broker/validation.py), so a like mistake reads alike in each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.errors import ConfigError
from broker.negotiation import messages as m
from broker.policy import parse_policy
from broker.service.config import parse_config
from broker.validation import Reader, show

FP = "sha256:" + "ab" * 32
CONFIG = {
    "domain": "a", "state_dir": "state", "listen": {"host": "127.0.0.1", "port": 8443},
    "tls": {"cert": "a.crt", "key": "a.key", "ca": "ca.crt"},
    "peers": {"b": {"url": "https://127.0.0.1:8444", "fingerprint": FP}},
}
REQUEST = m.Request(id="m-1", sender="a", recipient="b", sent_at=1.0, contract_id="a-c1",
                    nodes=2).to_dict()


def _policy_error(data) -> str:
    with pytest.raises(ConfigError) as err:
        parse_policy(data, "p.yml")
    return str(err.value)


def _config_error(change) -> str:
    raw = json.loads(json.dumps(CONFIG))
    change(raw)
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "b.yml", Path("/etc/viocluster"))
    return str(err.value)


def _message_error(change) -> str:
    raw = json.loads(json.dumps(REQUEST))
    change(raw)
    with pytest.raises(m.MessageError) as err:
        m.from_dict(raw)
    return err.value.reason


def test_an_unknown_key_is_named_by_its_path_with_what_is_allowed_there():
    assert _policy_error({"lending": {"fraction": 1}}).startswith(
        "p.yml: unknown key 'lending.fraction'; allowed under lending: enabled, fraction_idle")
    assert _config_error(lambda c: c["listen"].update(adress="x")) == (
        "b.yml: unknown key 'listen.adress'; allowed under listen: host, port")
    assert _message_error(lambda r: r["needs"].update(gpus=1)) == (
        "unknown field 'request.needs.gpus'; allowed under request.needs: cpus, disk_gb, "
        "memory_mb")


def test_a_wrong_value_says_what_was_given_and_what_is_expected():
    assert _policy_error({"reclamation": {"per_interval": 0}}) == (
        "p.yml: reclamation.per_interval: got 0; expected an integer >= 1")
    assert _config_error(lambda c: c["listen"].update(port=True)) == (
        "b.yml: listen.port: got true; expected an integer from 0 to 65535")
    assert _message_error(lambda r: r.update(nodes=0)) == (
        "request.nodes: got 0; expected an integer from 1 to 4096")


def test_a_wrong_kind_is_named_by_kind_and_the_message_stays_one_short_line():
    assert _policy_error({"lending": [1] * 10_000}) == (
        "p.yml: lending: got a list; expected a mapping with keys enabled, fraction_idle, "
        "min_reserve, max_lent, peers, windows, min_free_disk_gb, advertise")
    assert _message_error(lambda r: r.update(terms="x" * 10_000)).startswith(
        "request.terms: got 'xxxxxxxx")
    assert show(10**5000) == "an integer of thousands of digits"
    assert show(float("nan")) == "NaN" and show(None) == "null"


def test_missing_keys_are_listed():
    class R(Reader):
        error = ConfigError

    with pytest.raises(ConfigError, match=r"^f.yml: a.b: missing key\(s\) x, y$"):
        R("f.yml").mapping({}, "a.b", ["x", "y", "z"], ["x", "y"])
