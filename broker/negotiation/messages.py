"""Messages between brokers and their JSON codec.

Every message is a JSON object with an envelope (``type``, ``id``, ``sender``, ``recipient``,
``sent_at``) and the fields of its type. ``id`` is unique per message: a broker that receives
the same id twice answers the same way and changes nothing the second time.

:func:`decode` accepts only what is written here: an unknown type, a missing or extra field,
a wrong type or an out-of-range value raises :class:`MessageError` with a message naming the
field, so the peer can be told exactly what to fix. That holds for any input, not only for
plausible mistakes: NaN, Infinity, integers too large for a float, numbers of thousands of
digits, deep nesting, a key given twice in one object, text that is not UTF-8 or holds lone
surrogates all get a :class:`MessageError`, never another exception.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from broker.errors import UserError
from broker.validation import NAME_RE, Reader, show  # NAME_RE: others read it from here
RECLAIM_MODES = ("immediate", "lease", "drain", "gradual")
MAX_NODES = 4096
MAX_BODY = 64 * 1024
#: Ranges of the number fields: a time (``sent_at``, seconds since 1970) up to the end of the
#: year 9999, a lease up to 10^10 s (about 317 years), a round-trip time up to an hour.
MAX_TIME_S = 253_402_300_799.0
MAX_LEASE_S = 1e10
MAX_RTT_MS = 3_600_000.0
MAX_MEMORY_MB = 1 << 30
MAX_DISK_GB = 1 << 30
MAX_CPUS = 4096


class MessageError(UserError):
    """A message that cannot be accepted as it is; ``reason`` says what to fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_id(prefix: str = "m") -> str:
    """A fresh message or contract id."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


# --------------------------------------------------------------------------- value records


@dataclass(frozen=True)
class Needs:
    """What each node must have, as the borrower's jobs need it."""

    cpus: int = 1
    memory_mb: int = 0
    disk_gb: int = 0


@dataclass(frozen=True)
class Terms:
    """Terms of a loan: how the lender may take it back, and for how long it is lent."""

    mode: str = "immediate"
    lease_s: float = 3600.0
    per_interval: int = 1


@dataclass(frozen=True)
class HostOffer:
    """One lending host as measured at offer time: CPUs, free memory, free disk for COWs
    (whole GB), its site label and the round-trip time to it (ms, None if not measured).

    ``address`` is where the borrower's playbook reaches the host over SSH and ``account`` the
    unprivileged account the lender's administrator made there for the borrowing domain.
    """

    name: str
    address: str
    account: str
    cpus: int
    memory_mb: int
    disk_gb: int
    site: str
    rtt_ms: float | None = None


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Envelope shared by every message."""

    TYPE: ClassVar[str] = ""
    id: str
    sender: str
    recipient: str
    sent_at: float

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["type"] = self.TYPE
        return body


@dataclass(frozen=True)
class Request(Message):
    """Borrower to lender: lend me ``nodes`` machines that fit ``needs`` on these ``terms``."""

    TYPE: ClassVar[str] = "request"
    contract_id: str = ""
    nodes: int = 1
    needs: Needs = field(default_factory=Needs)
    terms: Terms = field(default_factory=Terms)


@dataclass(frozen=True)
class Offer(Message):
    """Lender to borrower: these hosts, measured now, on these terms."""

    TYPE: ClassVar[str] = "offer"
    contract_id: str = ""
    hosts: tuple[HostOffer, ...] = ()
    terms: Terms = field(default_factory=Terms)


@dataclass(frozen=True)
class Accept(Message):
    """Borrower to lender: the contract is agreed for these offered hosts."""

    TYPE: ClassVar[str] = "accept"
    contract_id: str = ""
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decline(Message):
    """Either side: no contract (nothing to lend, or nothing offered fits)."""

    TYPE: ClassVar[str] = "decline"
    contract_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Reclaim(Message):
    """Lender to borrower: I take these machines back (the borrower requeues their jobs).

    ``hosts``: the lending hosts taken back, when only some of the contract's are (a gradual
    reclaim: the contract stays active with the others); empty, and left out of the message,
    when all are (the contract ends)."""

    TYPE: ClassVar[str] = "reclaim"
    contract_id: str = ""
    reason: str = ""
    hosts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if not self.hosts:
            del body["hosts"]  # a whole reclaim reads as it always has
        return body


@dataclass(frozen=True)
class Return(Message):
    """Borrower to lender: I no longer need these machines; the lender may stop the VMs."""

    TYPE: ClassVar[str] = "return"
    contract_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Heartbeat(Message):
    """Either side: I am alive, and these are the contracts I hold with you and their states."""

    TYPE: ClassVar[str] = "heartbeat"
    contracts: tuple[tuple[str, str], ...] = ()


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Request, Offer, Accept, Decline, Reclaim, Return, Heartbeat)
}


# --------------------------------------------------------------------------- codec


def encode(message: Message) -> bytes:
    """Compact UTF-8 JSON of ``message``; :func:`decode` gives it back unchanged."""
    return json.dumps(message.to_dict(), separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes | str) -> Message:
    """Parse and validate one message; raise :class:`MessageError` naming what is wrong."""
    if isinstance(data, bytes):
        if len(data) > MAX_BODY:
            raise MessageError(f"message is {len(data)} bytes; the limit is {MAX_BODY}")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"message is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return from_dict(parse_json(data))


def parse_json(text: str) -> Any:
    """``json.loads`` that raises only :class:`MessageError`, and refuses a key given twice.

    NaN and Infinity parse (as floats) so that :func:`from_dict` names the field holding one.
    Nesting deep enough to exhaust the parser, and integers of more digits than Python reads,
    are refused here (a message is at most four levels deep, and no field takes such a number).
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise MessageError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise MessageError(
            "JSON nested too deeply: a message is an object of at most four levels "
            "(see docs/broker.md, Messages)"
        ) from None
    except ValueError:
        # Python refuses to read an integer of more than 4300 digits
        raise MessageError(
            "a number in the message has thousands of digits; no field takes a number "
            "that large"
        ) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MessageError(
                f"key {show(key)} appears twice in one object; send each field once"
            )
        obj[key] = value
    return obj


def from_dict(raw: Any) -> Message:
    """Build a message from decoded JSON, checking every field."""
    if not isinstance(raw, dict):
        raise MessageError(f"a message must be a JSON object, not {_json_type(raw)}")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise MessageError("field 'type' is missing or not a string")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        known = ", ".join(sorted(MESSAGE_TYPES))
        raise MessageError(f"unknown message type {show(kind)}; expected one of: {known}")
    expected = {f.name for f in fields(cls)} | {"type"}
    _object(raw, kind, expected, expected - OPTIONAL.get(cls, set()))
    values: dict[str, Any] = {
        "id": _name(raw, "id", kind),
        "sender": _name(raw, "sender", kind),
        "recipient": _name(raw, "recipient", kind),
        "sent_at": _number(raw, "sent_at", kind, 0, MAX_TIME_S,
                           "seconds since 1970, up to the year 9999"),
    }
    if "contract_id" in expected:
        values["contract_id"] = _name(raw, "contract_id", kind)
    if cls is Request:
        values["nodes"] = _int(raw, "nodes", kind, 1, MAX_NODES)
        values["needs"] = _needs(raw["needs"], kind)
        values["terms"] = _terms(raw["terms"], kind)
    elif cls is Offer:
        values["hosts"] = _host_offers(raw["hosts"], kind)
        values["terms"] = _terms(raw["terms"], kind)
    elif cls is Accept:
        values["hosts"] = _host_names(raw, kind)
    elif cls in (Decline, Reclaim, Return):
        values["reason"] = _text(raw, "reason", kind)
        if cls is Reclaim and "hosts" in raw:
            values["hosts"] = _host_names(raw, kind)
    elif cls is Heartbeat:
        items = _list(raw, "contracts", kind)
        pairs = []
        for i, item in enumerate(items):
            where = f"{kind}.contracts[{i}]"
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise _R.wrong(where, item, "[contract_id, state]")
            pairs.append(
                (_name({"c": item[0]}, "c", where), _name({"s": item[1]}, "s", where))
            )
        values["contracts"] = tuple(pairs)
    if values["sender"] == values["recipient"]:
        raise MessageError(f"{kind}: sender and recipient are both {values['sender']!r}")
    return cls(**values)


#: Fields a message may leave out (its default then holds).
OPTIONAL: dict[type, set[str]] = {Reclaim: {"hosts"}}


def _host_names(raw: dict[str, Any], kind: str) -> tuple[str, ...]:
    hosts = _list(raw, "hosts", kind, minimum=1)
    names = [_name({"name": item}, "name", f"{kind}.hosts[{i}]") for i, item in enumerate(hosts)]
    if len(set(names)) != len(names):
        raise MessageError(f"{kind}.hosts: a host is named twice")
    return tuple(names)


class _MessageReader(Reader):
    error = MessageError
    key = "field"
    mapping_kind = "an object"


_R = _MessageReader()


def _json_type(value: Any) -> str:
    return _R.kind(value) if isinstance(value, (dict, list, tuple)) else {
        str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else "null")


def _name(raw: dict[str, Any], key: str, where: str) -> str:
    return _R.name(raw.get(key), f"{where}.{key}")


def _text(raw: dict[str, Any], key: str, where: str, limit: int = 500) -> str:
    return _R.text(raw.get(key), f"{where}.{key}", limit=limit, empty=True)


def _int(raw: dict[str, Any], key: str, where: str, minimum: int, maximum: int) -> int:
    return _R.integer(raw.get(key), f"{where}.{key}", minimum, maximum)


def _number(raw: dict[str, Any], key: str, where: str, minimum: float, maximum: float,
            unit: str) -> float:
    return _R.number(raw.get(key), f"{where}.{key}", minimum, maximum,
                     expected=f"a number from {_bound(minimum)} to {_bound(maximum)} ({unit})")


def _bound(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def _list(raw: dict[str, Any], key: str, where: str, minimum: int = 0) -> list[Any]:
    return _R.array(raw.get(key), f"{where}.{key}", minimum, MAX_NODES)


def _object(value: Any, where: str, keys: set[str], required: set[str]) -> dict[str, Any]:
    return _R.mapping(value, where, sorted(keys), sorted(required))


def _needs(value: Any, kind: str) -> Needs:
    where = f"{kind}.needs"
    keys = {"cpus", "memory_mb", "disk_gb"}
    obj = _object(value, where, keys, keys)
    return Needs(
        cpus=_int(obj, "cpus", where, 1, MAX_CPUS),
        memory_mb=_int(obj, "memory_mb", where, 0, MAX_MEMORY_MB),
        disk_gb=_int(obj, "disk_gb", where, 0, MAX_DISK_GB),
    )


def _terms(value: Any, kind: str) -> Terms:
    where = f"{kind}.terms"
    keys = {"mode", "lease_s", "per_interval"}
    obj = _object(value, where, keys, keys)
    mode = obj["mode"]
    _R.choice(mode, f"{where}.mode", RECLAIM_MODES)
    lease = _number(obj, "lease_s", where, 0, MAX_LEASE_S, "seconds")
    per_interval = _int(obj, "per_interval", where, 1, MAX_NODES)
    return Terms(mode=mode, lease_s=lease, per_interval=per_interval)


def _host_offers(value: Any, kind: str) -> tuple[HostOffer, ...]:
    items = _list({"hosts": value}, "hosts", kind, minimum=1)
    hosts = []
    keys = {"name", "address", "account", "cpus", "memory_mb", "disk_gb", "site", "rtt_ms"}
    for i, item in enumerate(items):
        where = f"{kind}.hosts[{i}]"
        obj = _object(item, where, keys, keys - {"rtt_ms"})
        rtt = obj.get("rtt_ms")
        if rtt is not None:
            rtt = _number(obj, "rtt_ms", where, 0, MAX_RTT_MS, "milliseconds, or null")
        hosts.append(
            HostOffer(
                name=_name(obj, "name", where),
                address=_name(obj, "address", where),
                account=_name(obj, "account", where),
                cpus=_int(obj, "cpus", where, 1, MAX_CPUS),
                memory_mb=_int(obj, "memory_mb", where, 0, MAX_MEMORY_MB),
                disk_gb=_int(obj, "disk_gb", where, 0, MAX_DISK_GB),
                site=_name(obj, "site", where),
                rtt_ms=rtt,
            )
        )
    if len({h.name for h in hosts}) != len(hosts):
        raise MessageError(f"{kind}.hosts: a host is offered twice")
    return tuple(hosts)
