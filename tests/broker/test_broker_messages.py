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
        (json.dumps(_request(colour="red")).encode(), "unknown field(s) colour"),
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
