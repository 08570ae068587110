"""A seeded generator of requests to a broker's peer API, for the fuzz tests.

Every case is one HTTP request as peer ``a`` sends it to broker ``b``: a valid message of each
kind the broker accepts (built from what the broker has answered so far, so an ``accept``
names a contract it really offered), that message mutated (fields dropped, added, retyped,
set to huge, NaN, infinite or boundary numbers, lists emptied or grown, keys given twice,
bytes flipped, truncated, not UTF-8, nested deep, over the size limit), or generated junk
(random bytes, JSON that is not an object, wrong methods, paths, content types and
encodings). The same seed gives the same cases for the same answers.

:meth:`Case.expected` says, without asking the broker, whether the request carries a message
the broker must accept (it routes to ``POST /v1/messages``, decodes, comes from ``a`` and is
addressed to ``b``); the tests hold the broker's answers and its store to that.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from dataclasses import dataclass, field
from typing import Any

from broker.negotiation import messages as m

SENDER, RECIPIENT = "a", "b"
PATH = "/v1/messages"
STATES = ("proposed", "agreed", "provisioning", "active", "reclaiming", "closed", "failed")
KINDS = ("request", "offer", "accept", "decline", "reclaim", "return", "heartbeat")

# Values a field is set to: wrong types, huge and non-finite numbers, boundaries, odd text.
# A str starting with RAW is written into the JSON text as it is (json.dumps cannot write
# an integer of 5000 digits, nor a bare token like 1e400).
RAW = "\x00raw:"
JUNK: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2, 1.5, -0.0, 0.1, 4096, 4097, 2**31, 2**53 + 1, 2**63, 2**64,
    10**20, 10**400, -(10**400), 1e308, -1e308, 5e-324, float("nan"), float("inf"),
    float("-inf"), m.MAX_TIME_S, m.MAX_TIME_S + 1, m.MAX_LEASE_S, m.MAX_LEASE_S * 10,
    1 << 30, (1 << 30) + 1, "", "a", "x" * 63, "x" * 64, "a\n", " a", "a b", "\u00e9t\u00e9",
    "\ud800", "\udfff", "\x00", "NaN", "1", "immediate", "lease", "n1", "b", "a", "c",
    "y" * 600, "z" * 70_000, [], [[]], {}, {"cpus": 1}, [1, 2], ["n1", "n1"], [["x", "y"]],
    [None], {"": None},
    RAW + "NaN", RAW + "Infinity", RAW + "-Infinity", RAW + "1" + "0" * 400, RAW + "1e400",
    RAW + "-1e400", RAW + "9" * 5000, RAW + "1" + "0" * 4299, RAW + "0.0000001e-400",
    RAW + "[" * 3000 + "]" * 3000, RAW + "{\"a\":" * 2000 + "1" + "}" * 2000,
)
METHODS = ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
PATHS = ("/", "/v1", "/v1/", "/v1/messages/", "/v1/messages/1", "/v2/messages", "/v1/health",
         "/V1/MESSAGES", "/v1/messages.json", "/v1//messages", "/metrics", "/status",
         "/v1/messages%00", "/" + "p" * 3000, "/%ff%fe", "/v1/message")
CONTENT_TYPES = (None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                 "application/octet-stream", "image/png", "", "*/*", "application/json; x=\"")


@dataclass
class Case:
    label: str  # what kind of case this is, for the histogram
    method: str = "POST"
    path: str = PATH
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    sent: bytes | None = None  # the body as the broker reads it (after Content-Encoding)
    chunked: bool = False

    def expected(self) -> m.Message | None:
        """The message the broker must accept from this request, or None if it must refuse."""
        if self.method != "POST" or self.path.split("?", 1)[0] != PATH:
            return None
        body = self.body if self.sent is None else self.sent
        try:
            message = m.decode(body)
        except m.MessageError:
            return None
        if message.sender != SENDER or message.recipient != RECIPIENT:
            return None
        return message


@dataclass
class Knowledge:
    """What the broker's answers have told so far."""

    offered: dict[str, tuple[str, ...]] = field(default_factory=dict)  # contract -> hosts
    contracts: list[str] = field(default_factory=list)  # every contract id it offered
    agreed: list[str] = field(default_factory=list)  # contracts an accept agreed
    heartbeats: dict[str, int] = field(default_factory=dict)  # agreed contract -> sent
    message_ids: list[str] = field(default_factory=list)
    accepts_left: int = 6  # valid accepts of a proposed contract (each may run a playbook)

    def learn(self, message: m.Message | None, status: int, answer: Any) -> None:
        if message is None or not isinstance(answer, dict):
            return
        if len(self.message_ids) < 5000:
            self.message_ids.append(message.id)
        reply = answer.get("reply")
        if status == 200 and isinstance(reply, dict) and reply.get("type") == "offer":
            cid = reply.get("contract_id")
            hosts = tuple(h.get("name") for h in reply.get("hosts", []) if isinstance(h, dict))
            if isinstance(cid, str):
                if cid not in self.offered and cid not in self.contracts:
                    self.contracts.append(cid)
                self.offered[cid] = hosts
        elif (status in (200, 409) and isinstance(message, (m.Accept, m.Decline, m.Return))
              and answer.get("state") not in (None, "proposed")):
            self.offered.pop(message.contract_id, None)
            if answer.get("state") == "agreed" and message.contract_id not in self.agreed:
                self.agreed.append(message.contract_id)


class Generator:
    """Seeded cases; :meth:`next` builds one from the knowledge gathered so far."""

    def __init__(self, seed: int, knowledge: Knowledge | None = None) -> None:
        self.rng = random.Random(seed)
        self.know = knowledge or Knowledge()
        self.serial = 0

    # -------------------------------------------------------------------- names, values

    def _fresh(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial:07d}"

    def _contract_id(self, fresh: float = 0.3) -> str:
        rng = self.rng
        if self.know.contracts and rng.random() > fresh:
            return rng.choice(self.know.contracts)
        if rng.random() < 0.5:
            return self._fresh("a-c")
        return rng.choice(("a-c0", "b-c1", "x", "a-" + "q" * 61, "n1"))

    def _not_agreed(self, fresh: float) -> str:
        """A contract id, seldom one on offer or agreed (so that offers live until an accept
        comes, and most agreements progress a while before a return or 'closed' ends them)."""
        cid = self._contract_id(fresh)
        if cid in self.know.agreed and self.rng.random() < 0.95:
            return self._fresh("a-c")
        if cid in self.know.offered and self.know.accepts_left > 0 and self.rng.random() < 0.8:
            return self._fresh("a-c")
        return cid

    def _message_id(self) -> str:
        if self.know.message_ids and self.rng.random() < 0.03:
            return self.rng.choice(self.know.message_ids)  # a resend, or an id reused
        return self._fresh("m-")

    def _text(self) -> str:
        return self.rng.choice(("", "idle", "own demand", "ünïcödé ✓", "x" * 500, "tab\there",
                                "line\nbreak", "<script>", "'; DROP TABLE contracts; --"))

    # -------------------------------------------------------------------- valid messages

    def valid(self, kind: str | None = None) -> dict[str, Any]:
        """A valid message of ``kind`` (a random one if None) from a to b, as a dict."""
        rng = self.rng
        kind = kind or rng.choice(KINDS)
        env = {"id": self._message_id(), "sender": SENDER, "recipient": RECIPIENT,
               "sent_at": rng.choice((0, 1.0, 1.7e9 + rng.random() * 1e8, m.MAX_TIME_S))}
        terms = {"mode": rng.choice(m.RECLAIM_MODES),
                 "lease_s": rng.choice((0, 60, 3600.5, m.MAX_LEASE_S)),
                 "per_interval": rng.randint(1, 4)}
        if kind == "request":
            msg = m.Request(**env, contract_id=self._contract_id(), nodes=rng.randint(1, 3),
                            needs=m.Needs(rng.randint(1, 2), rng.choice((0, 128)),
                                          rng.choice((0, 1))),
                            terms=m.Terms(**terms))
        elif kind == "offer":
            hosts = tuple(m.HostOffer(f"h{i}", "10.0.0.1", "vbka", 1, 512, 1, "site-a",
                                      rng.choice((None, 0.5)))
                          for i in range(rng.randint(1, 2)))
            msg = m.Offer(**env, contract_id=self._contract_id(), hosts=hosts,
                          terms=m.Terms(**terms))
        elif kind == "accept":
            if self.know.offered and self.know.accepts_left > 0 and rng.random() < 0.5:
                cid = rng.choice(sorted(self.know.offered))
                self.know.accepts_left -= 1
                msg = m.Accept(**env, contract_id=cid, hosts=self.know.offered[cid])
            else:
                # any contract but one on offer: no agreement beyond the budget
                cid = self._contract_id()
                while cid in self.know.offered:
                    cid = self._fresh("a-c")
                msg = m.Accept(**env, contract_id=cid,
                               hosts=tuple(rng.sample(("n1", "n2", "h9"), rng.randint(1, 2))))
        elif kind in ("decline", "reclaim", "return"):
            cls = {"decline": m.Decline, "reclaim": m.Reclaim, "return": m.Return}[kind]
            msg = cls(**env, contract_id=self._not_agreed(0.5), reason=self._text())
        else:
            pairs = [(self._not_agreed(0.4), rng.choice(STATES))
                     for _ in range(rng.randint(0, 3))]
            if self.know.agreed and rng.random() < 0.3:
                # the borrower's progress as a borrower reports it: provisioning, active for
                # a while, and only then maybe closed
                cid = rng.choice(self.know.agreed)
                sent = self.know.heartbeats[cid] = self.know.heartbeats.get(cid, 0) + 1
                state = ("provisioning" if sent < 3 else "active" if sent < 8
                         else rng.choice(("active", "closed")))
                pairs.append((cid, state))
            msg = m.Heartbeat(**env, contracts=tuple(pairs))
        return msg.to_dict()

    # -------------------------------------------------------------------- mutations

    def _junk(self) -> Any:
        value = self.rng.choice(JUNK)
        return copy.deepcopy(value) if isinstance(value, (list, dict)) else value

    @staticmethod
    def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Every place in a JSON value: keys of objects, indexes of arrays."""
        found = []
        if isinstance(obj, dict):
            for key, value in obj.items():
                found.append((*prefix, key))
                found.extend(Generator._paths(value, (*prefix, key)))
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                found.append((*prefix, i))
                found.extend(Generator._paths(value, (*prefix, i)))
        return found

    @staticmethod
    def _parent(obj: Any, path: tuple[Any, ...]) -> Any:
        for step in path[:-1]:
            obj = obj[step]
        return obj

    def mutate(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One to three structural changes; some keep the message valid."""
        rng = self.rng
        msg = json.loads(json.dumps(msg))  # tuples become lists, as on the wire
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            paths = self._paths(msg)
            op = rng.randrange(11)
            path = rng.choice(paths) if paths else ("type",)
            try:
                parent = self._parent(msg, path)
            except (KeyError, IndexError, TypeError):
                continue
            key = path[-1]
            if op <= 2:  # a value replaced with junk
                parent[key] = self._junk()
            elif op == 3:  # a field or item removed
                del parent[key]
            elif op == 4:  # a field added to the message or to one of its objects
                objects = [msg, *(v for v in (self._parent(msg, q + (None,)) for q in paths)
                                  if isinstance(v, dict))]
                target = rng.choice(objects)
                name = rng.choice(("extra", "Type", "id ", "", "\u2603", "x" * 100))
                target[name] = self._junk()
            elif op == 5:  # another type
                msg["type"] = rng.choice((*KINDS, "gossip", "", "REQUEST"))
            elif op == 6:  # another sender or recipient
                msg[rng.choice(("sender", "recipient"))] = rng.choice(("a", "b", "c", "x", "A"))
            elif op == 7:  # a name replaced by another valid one (the id: a fresh message)
                if isinstance(parent[key], str):
                    parent[key] = self._fresh("n-")
                else:
                    msg["id"] = self._fresh("m-")
            elif op == 8:  # a number at or past a boundary
                parent[key] = rng.choice((0, -1, 1, 4096, 4097, m.MAX_TIME_S, m.MAX_TIME_S + 1,
                                          m.MAX_LEASE_S, m.MAX_LEASE_S + 1, 10**400, 0.5))
            elif op == 9:  # an array emptied, doubled or grown past the limit
                if isinstance(parent[key], list):
                    items = parent[key]
                    parent[key] = rng.choice(([], items + items, (items or [1]) * 4097))
                else:
                    parent[key] = [parent[key]]
            else:  # a value wrapped in an array or an object
                parent[key] = rng.choice(([parent[key]], {"value": parent[key]}))
        return msg

    def dumps(self, msg: Any) -> bytes:
        """JSON of ``msg`` with the RAW values written in as they are."""
        raws: list[str] = []

        def walk(value: Any) -> Any:
            if isinstance(value, str) and value.startswith(RAW):
                raws.append(value[len(RAW):])
                return f"\x00RAWSLOT{len(raws) - 1}\x00"
            if isinstance(value, dict):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        text = json.dumps(walk(msg), separators=(",", ":") if self.rng.random() < 0.7 else None)
        for i, raw in enumerate(raws):
            text = text.replace(json.dumps(f"\x00RAWSLOT{i}\x00"), raw)
        return text.encode("utf-8", errors="surrogatepass")

    def corrupt(self, data: bytes) -> bytes:
        """Byte-level damage to a serialized message."""
        rng = self.rng
        op = rng.randrange(12)
        if op == 0 and data:
            return data[: rng.randrange(len(data))]
        if op == 1 and data:
            out = bytearray(data)
            for _ in range(rng.randint(1, 5)):
                out[rng.randrange(len(out))] = rng.randrange(256)
            return bytes(out)
        if op == 2:
            at = rng.randrange(len(data) + 1)
            return data[:at] + rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80",
                                           b"\xf4\x90\x80\x80")) + data[at:]
        if op == 3:
            return b"\xef\xbb\xbf" + data
        if op == 4:
            return data + rng.choice((b"x", b"}", b",", b" {}", b"\x00", b"\n\n"))
        if op == 5:
            depth = rng.choice((10, 500, 5000, 30000))
            return b"[" * depth + data + b"]" * depth
        if op == 6:
            return b" " * (m.MAX_BODY - len(data) + rng.choice((0, 1, 100))) + data
        if op == 7:  # a key given twice
            return data.replace(b"{", b'{"' + rng.choice((b"sender", b"id", b"type", b"mode"))
                                + b'":' + rng.choice((b'"c"', b'"m-dup"', b'"request"', b"1"))
                                + b",", 1)
        if op == 8:  # a number replaced by a huge or non-finite one
            for key in (b'"sent_at":', b'"lease_s":', b'"nodes":', b'"cpus":'):
                if key in data:
                    start = data.index(key) + len(key)
                    end = start
                    while end < len(data) and data[end:end + 1] not in b",}":
                        end += 1
                    return data[:start] + rng.choice((
                        b"1" + b"0" * 400, b"-1" + b"0" * 400, b"1e400", b"NaN", b"Infinity",
                        b"-Infinity", b"9" * 4400, b"1.0e-400", b"0x10", b"01", b"+1", b".5",
                        b"1e", b"--1")) + data[end:]
            return data
        if op == 9 and data:
            at = rng.randrange(len(data))
            return data[:at] + data[at + rng.randint(1, 20):]
        if op == 10:
            return data.replace(b'"', b"'", rng.randint(1, 4))
        return data.decode("utf-8", errors="replace").encode("utf-16")

    # -------------------------------------------------------------------- junk requests

    def junk(self) -> Case:
        rng = self.rng
        op = rng.randrange(8)
        if op == 0:
            return Case("junk:bytes", body=rng.randbytes(rng.choice((0, 1, 10, 500, 4000))))
        if op == 1:
            return Case("junk:json-not-object", body=rng.choice(
                (b"[]", b"null", b"1", b'"request"', b"true", b"{}", b"[{}]", b"-0",
                 b"1" + b"0" * 400, b"NaN", b"")))
        if op == 2:
            return Case("junk:deep", body=rng.choice((b"[" * 100_000, b'{"a":' * 20_000,
                                                      b"[" * 800 + b"]" * 800)))
        if op == 3:
            return Case("junk:too-large", body=b"{" + b" " * (m.MAX_BODY + rng.randint(0, 5000))
                        + b"}")
        if op == 4:  # a valid message over another method
            return Case("http:method", method=rng.choice(METHODS), body=self.dumps(self.valid()))
        if op == 5:  # a valid message to another path
            return Case("http:path", path=rng.choice(PATHS), body=self.dumps(self.valid()))
        if op == 6:  # a compressed body, valid or not
            raw = self.dumps(self.valid())
            if rng.random() < 0.5:
                return Case("http:gzip", body=gzip.compress(raw),
                            headers={"Content-Encoding": "gzip"}, sent=raw)
            bomb = gzip.compress(b" " * (m.MAX_BODY * 4) + raw)
            return Case("http:gzip-large", body=bomb, headers={"Content-Encoding": "gzip"},
                        sent=b" " * (m.MAX_BODY * 4) + raw)
        return Case("junk:empty-object-fields", body=self.dumps(
            {k: self._junk() for k in ("type", "id", "sender", "recipient", "sent_at")}))

    # -------------------------------------------------------------------- the mix

    def next(self) -> Case:
        rng = self.rng
        roll = rng.random()
        if roll < 0.22:
            msg = self.valid()
            case = Case(f"valid:{msg['type']}", body=self.dumps(msg))
        elif roll < 0.72:
            msg = self.valid()
            case = Case(f"mutated:{msg['type']}", body=self.dumps(self.mutate(msg)))
        elif roll < 0.87:
            msg = self.valid()
            case = Case(f"corrupted:{msg['type']}", body=self.corrupt(self.dumps(msg)))
        else:
            case = self.junk()
        if rng.random() < 0.15:
            value = rng.choice(CONTENT_TYPES)
            if value is not None:
                case.headers["Content-Type"] = value
        if rng.random() < 0.03:
            case.path += rng.choice(("?x=1", "?", "?id=m-1&&", "?%ff=%00"))
        case.chunked = rng.random() < 0.05
        return case
