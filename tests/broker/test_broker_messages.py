"""The message codec: round trips, and a clear error for every kind of bad input."""

from __future__ import annotations

import json

import pytest

from broker.negotiation import messages as m


def _request(**over):
    base = m.Request(
        id="m-1", sender="a", recipient="b", sent_at=1.0, contract_id="a-c1", nodes=2,
        needs=m.Needs(cpus=1, memory_mb=128, disk_gb=1), terms=m.Terms("immediate", 3600, 1),
    )
    raw = base.to_dict()
    raw.update(over)
    return raw


ALL = [
    m.Request(id="m-1", sender="a", recipient="b", sent_at=1.0, contract_id="a-c1", nodes=2),
    m.Offer(
        id="m-2", sender="b", recipient="a", sent_at=2.0, contract_id="a-c1",
        hosts=(m.HostOffer("h1", "10.204.1.1", "vbka", 2, 2048, 10, "site-b", 0.4), m.HostOffer("h2", "10.204.1.2", "vbka", 1, 512, 3, "site-b")),
    ),
    m.Accept(id="m-3", sender="a", recipient="b", sent_at=3.0, contract_id="a-c1", hosts=("h1",)),
    m.Decline(id="m-4", sender="b", recipient="a", sent_at=4.0, contract_id="a-c1", reason="busy"),
    m.Reclaim(id="m-5", sender="b", recipient="a", sent_at=5.0, contract_id="a-c1", reason="load"),
    m.Return(id="m-6", sender="a", recipient="b", sent_at=6.0, contract_id="a-c1", reason="idle"),
    m.Heartbeat(id="m-7", sender="a", recipient="b", sent_at=7.0, contracts=(("a-c1", "active"),)),
    m.Reclaim(id="m-8", sender="b", recipient="a", sent_at=8.0, contract_id="a-c1", reason="load",
              hosts=("h1",)),  # a gradual reclaim: some of the contract's hosts
]


@pytest.mark.parametrize("message", ALL, ids=[type(x).__name__ for x in ALL])
def test_every_type_round_trips(message):
    assert m.decode(m.encode(message)) == message


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({"type": "gimme", "id": "x"}).encode(), "unknown message type 'gimme'"),
        (json.dumps(_request(colour="red")).encode(), "unknown field 'request.colour'; allowed under request:"),
        (json.dumps({k: v for k, v in _request().items() if k != "nodes"}).encode(), "missing field(s) nodes"),
        (json.dumps(_request(nodes=0)).encode(), "request.nodes"),
        (json.dumps(_request(nodes=True)).encode(), "request.nodes"),
        (json.dumps(_request(id="has space")).encode(), "request.id"),
        (json.dumps(_request(sender="b")).encode(), "sender and recipient are both"),
        (json.dumps(_request(needs={"cpus": 1})).encode(), "request.needs: missing field(s)"),
        (json.dumps(_request(terms={"mode": "never", "lease_s": 1, "per_interval": 1})).encode(), "request.terms.mode"),
        (json.dumps(_request(sent_at=float("nan")), allow_nan=True).encode(), "request.sent_at"),
        (b"x" * (m.MAX_BODY + 1), "the limit is"),
    ],
)
def test_bad_input_names_the_problem(data, words):
    with pytest.raises(m.MessageError) as err:
        m.decode(data)
    assert words in err.value.reason


def test_offer_rejects_a_host_offered_twice():
    raw = ALL[1].to_dict()
    raw["hosts"] = [raw["hosts"][0], raw["hosts"][0]]
    with pytest.raises(m.MessageError, match="offered twice"):
        m.from_dict(raw)


def test_offer_host_fields_are_checked():
    raw = ALL[1].to_dict()
    raw["hosts"][0]["cpus"] = -1
    with pytest.raises(m.MessageError, match=r"offer.hosts\[0\].cpus"):
        m.from_dict(raw)


# Any input: a MessageError naming the field and what is expected, never another exception --


def _with(path: str, value, raw_text: str | None = None) -> bytes:
    """A valid request with the field at ``path`` (a.b for nested) set to ``value``; with
    ``raw_text``, the JSON number text written in as it is."""
    raw = _request()
    target = raw
    *parents, key = path.split(".")
    for name in parents:
        target = target[name]
    target[key] = "@@slot@@" if raw_text is not None else value
    text = json.dumps(raw)
    if raw_text is not None:
        text = text.replace('"@@slot@@"', raw_text)
    return text.encode()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        # the issue: an integer too large for a float raised OverflowError (a 500)
        (_with("sent_at", 10**400), ["request.sent_at: got an integer of 401 digits; expected "
                                     "a number from 0 to 253402300799"]),
        (_with("terms.lease_s", 10**400),
         ["request.terms.lease_s: got an integer of 401 digits; expected a number from 0 to "
          "10000000000 (seconds)"]),
        (_with("sent_at", -(10**400)), ["request.sent_at", "401 digits"]),
        (_with("sent_at", None, "Infinity"), ["request.sent_at", "got Infinity"]),
        (_with("sent_at", None, "-Infinity"), ["request.sent_at", "got -Infinity"]),
        (_with("sent_at", None, "1e400"), ["request.sent_at", "got Infinity"]),
        (_with("terms.lease_s", None, "NaN"), ["request.terms.lease_s", "got NaN"]),
        (_with("sent_at", m.MAX_TIME_S + 1), ["request.sent_at", "up to the year 9999"]),
        (_with("sent_at", -1), ["request.sent_at", "got -1"]),
        (_with("terms.lease_s", m.MAX_LEASE_S * 2), ["request.terms.lease_s", "got 20000000000.0"]),
        (_with("sent_at", "1"), ["request.sent_at", "got '1'"]),
        (_with("sent_at", True), ["request.sent_at", "got true"]),
        (_with("sent_at", [1]), ["request.sent_at", "got an array"]),
        (_with("nodes", 10**400), ["request.nodes: got an integer of 401 digits; expected an "
                                   "integer from 1 to 4096"]),
        (_with("nodes", 1.5), ["request.nodes", "got 1.5"]),
        (_with("needs.cpus", 2**64), ["request.needs.cpus", "got 18446744073709551616"]),
        (_with("needs.cpus", 10**25), ["request.needs.cpus", "an integer of 26 digits"]),
        (_with("needs", []), ["request.needs: got an array; expected an object with fields cpus, "
                                    "disk_gb, memory_mb"]),
        (_with("terms.mode", 5), ["request.terms.mode", "got 5"]),
        (_with("terms.mode", {"a": 1}), ["request.terms.mode", "got an object"]),
        # numbers of more digits than Python reads (a ValueError inside json.loads)
        (_with("sent_at", None, "9" * 5000), ["thousands of digits"]),
        (_with("nodes", None, "1" + "0" * 4299), ["request.nodes", "thousands of digits"]),
        # nesting deep enough to exhaust the parser (a RecursionError inside json.loads)
        (b"[" * 60_000, ["nested too deeply"]),
        (b'{"a":' * 12_000, ["nested too deeply"]),
        (_with("needs", None, "[" * 5000 + "]" * 5000), ["nested too deeply"]),
        # a key given twice: which one counts would depend on the parser
        (b'{"type":"request","type":"heartbeat"}', ["key 'type' appears twice"]),
        (_with("terms", None, '{"mode":"lease","mode":"immediate"}'), ["key 'mode' appears twice"]),
        # text: names end where they seem to, reasons are storable Unicode
        (_with("id", "m-1\n"), ["request.id", "got 'm-1\\n'"]),
        (_with("contract_id", "a" * 64), ["request.contract_id"]),
        (json.dumps({**ALL[3].to_dict(), "sender": "a", "recipient": "b",
                     "reason": "\ud800"}).encode(), ["decline.reason", "lone UTF-16 surrogate"]),
        (json.dumps({**ALL[3].to_dict(), "reason": "r" * 501}).encode(),
         ["decline.reason: got 501 characters; expected a string of at most 500 characters"]),
        (b'{"type": "request", "id": "\xed\xa0\x80"}', ["not UTF-8"]),
        (b"\xef\xbb\xbf{}", ["malformed JSON"]),
        (b"", ["malformed JSON"]),
        (json.dumps(ALL[0].to_dict()).encode("utf-16"), ["not UTF-8"]),
        # arrays past their limit
        (json.dumps({**ALL[2].to_dict(), "hosts": ["h"] * 5000}).encode(),
         ["accept.hosts: got 5000 items; expected an array of 1 to 4096 items"]),
        (json.dumps({**ALL[6].to_dict(), "contracts": [["a-c1"]]}).encode(),
         ["heartbeat.contracts[0]: got an array; expected [contract_id, state]"]),
    ],
)
def test_any_bad_value_is_named_with_what_is_expected(data, words):
    with pytest.raises(m.MessageError) as err:
        m.decode(data)
    for word in words:
        assert word in err.value.reason
    assert "\n" not in err.value.reason and len(err.value.reason) < 400


def test_numbers_at_the_limits_are_accepted():
    raw = _request(sent_at=int(m.MAX_TIME_S))
    raw["terms"]["lease_s"] = int(m.MAX_LEASE_S)
    message = m.from_dict(raw)
    assert message.sent_at == m.MAX_TIME_S and message.terms.lease_s == m.MAX_LEASE_S
    assert m.from_dict(_request(sent_at=0)).sent_at == 0.0
    offer = ALL[1].to_dict()
    offer["hosts"][0]["rtt_ms"] = m.MAX_RTT_MS
    assert m.from_dict(offer).hosts[0].rtt_ms == m.MAX_RTT_MS


def test_an_odd_field_name_is_shown_short_and_quoted():
    with pytest.raises(m.MessageError) as err:
        m.from_dict(_request(**{"x" * 10_000: 1, "bad\nname": 2}))
    assert "'bad\\nname'" in err.value.reason and "(10000 characters)" in err.value.reason
    assert len(err.value.reason) < 400


def test_decode_raises_only_message_error_for_generated_input():
    """Seeded mutations of every message kind and junk (the live fuzz test's generator)."""
    from fuzz_messages import Generator

    gen = Generator(seed=7)
    accepted = 0
    for _ in range(4000):
        case = gen.next()
        try:
            m.decode(case.sent if case.sent is not None else case.body)
            accepted += 1
        except m.MessageError as exc:
            assert exc.reason and "\n" not in exc.reason and len(exc.reason) < 600, exc.reason
    assert 500 < accepted < 3000  # both kinds are well represented


def test_a_whole_reclaim_reads_as_before_and_a_partial_one_names_its_hosts():
    whole = m.Reclaim(id="m-5", sender="b", recipient="a", sent_at=5.0, contract_id="a-c1",
                      reason="load")
    assert "hosts" not in whole.to_dict()
    raw = {**whole.to_dict(), "hosts": ["h1", "h1"]}
    with pytest.raises(m.MessageError, match="a host is named twice"):
        m.from_dict(raw)
    with pytest.raises(m.MessageError, match="reclaim.hosts"):
        m.from_dict({**whole.to_dict(), "hosts": []})
