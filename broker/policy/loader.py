"""Read a domain's policy from the YAML file its administrator writes.

Every wrong key, type or value raises :class:`broker.errors.ConfigError` naming the key by its
path (``lending.fraction_idle``), what was given and what is expected, in the shape every
reader shares (:mod:`broker.validation`). See
docs/examples/policy.yml for a commented example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker.errors import ConfigError
from broker.validation import Reader, read_yaml_file
from broker.negotiation.messages import MAX_LEASE_S
from broker.policy.borrowing import BorrowingPolicy
from broker.policy.domain import DomainPolicy
from broker.policy.hosts import Location, Requirements
from broker.policy.lending import LendingPolicy
from broker.policy.reclamation import Mode, ReclamationPolicy, Terms
from broker.policy.windows import FORMAT as WINDOW_FORMAT
from broker.policy.windows import TimeWindow, parse_window

MODES = tuple(m.value for m in Mode)


@dataclass(frozen=True)
class _Key:
    """One allowed key: a checker turning the YAML value (at a path) into the policy value."""

    check: Callable[[str, Any], Any]


class _Reader(Reader):
    """The shared checks (:mod:`broker.validation`), with the policy's own values."""

    error = ConfigError

    # -- checkers -------------------------------------------------------------------------
    def flag(self, path: str, v: Any) -> bool:
        return self.boolean(v, path)

    def count(self, path: str, v: Any, *, none_ok: bool = False) -> int | None:
        if v is None and none_ok:
            return None
        return self.integer(v, path, 0,
                            expected="an integer >= 0" + (" or null (no cap)" if none_ok else ""))

    def seconds(self, path: str, v: Any) -> float:
        # at most what a message's terms.lease_s may carry, or peers would refuse our offers
        return self.number(v, path, 0, MAX_LEASE_S,
                           expected=f"a number of seconds from 0 to {MAX_LEASE_S:.0f}")

    def deadline(self, path: str, v: Any) -> float | None:
        if v is None:
            return None
        return self.number(v, path, 0, MAX_LEASE_S,
                           expected=f"a number of seconds from 0 to {MAX_LEASE_S:.0f}, "
                                    "or null (no deadline)")

    def job_cap(self, path: str, v: Any) -> float | None:
        if v is None:
            return None
        return self.number(v, path, 0, MAX_LEASE_S, above=True,
                           expected=f"a number of seconds > 0 and at most {MAX_LEASE_S:.0f}, "
                                    "or null (no cap)")

    def rtt(self, path: str, v: Any) -> float | None:
        if v is None:
            return None
        return self.number(v, path, 0, 3_600_000,
                           expected="a number of milliseconds from 0 to 3600000, or null (any)")

    def sites(self, path: str, v: Any) -> frozenset[str] | None:
        if v == "all" or v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
            raise self.wrong(path, v, "'all' or a list of site names (a lender's 'site')")
        return frozenset(v)

    def fraction(self, path: str, v: Any) -> float:
        return self.number(v, path, 0, 1, expected="a number from 0 to 1 (paper: 0.5)")

    def positive(self, path: str, v: Any) -> int:
        return self.integer(v, path, 1)

    def windows(self, path: str, v: Any) -> tuple[TimeWindow, ...]:
        if v is None:
            return ()
        if not isinstance(v, list):
            raise self.wrong(path, v, f"a list of windows, each {WINDOW_FORMAT}")
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise self.wrong(f"{path}[{i}]", item, WINDOW_FORMAT)
            try:
                out.append(parse_window(item))
            except ValueError as exc:
                raise self.wrong(f"{path}[{i}]", item, str(exc).removeprefix("expected ")) from None
        return tuple(out)

    def peers(self, path: str, v: Any) -> frozenset[str] | None:
        if v == "all" or v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
            raise self.wrong(path, v, "'all' or a list of peer domain names")
        return frozenset(v)

    def mode(self, path: str, v: Any) -> Mode:
        return Mode(self.choice(v, path, MODES))

    def modes(self, path: str, v: Any) -> frozenset[Mode]:
        if v == "all":
            return frozenset(Mode)
        if not isinstance(v, list):
            raise self.wrong(path, v, f"'all' or a list of: {', '.join(MODES)}")
        return frozenset(self.mode(f"{path}[{i}]", m) for i, m in enumerate(v))

    def timezone(self, path: str, v: Any) -> Any:
        if not isinstance(v, str):
            raise self.wrong(path, v, "an IANA time zone name such as UTC or America/New_York")
        try:
            return ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.wrong(
                path, v, "an IANA time zone name such as UTC or America/New_York"
            ) from None

    # -- sections -------------------------------------------------------------------------
    def section(self, path: str, data: Any, keys: Mapping[str, _Key]) -> dict[str, Any]:
        if data is None:
            return {}
        self.mapping(data, path, list(keys))
        return {str(key): keys[key].check(f"{path}.{key}" if path else str(key), value)
                for key, value in data.items()}


def parse_policy(data: Any, source: str = "policy") -> DomainPolicy:
    """Build a :class:`DomainPolicy` from a parsed YAML mapping (None: all defaults)."""
    r = _Reader(source)
    cap = lambda p, v: r.count(p, v, none_ok=True)  # noqa: E731
    lending_keys = {
        "enabled": _Key(r.flag),
        "fraction_idle": _Key(r.fraction),
        "min_reserve": _Key(r.count),
        "max_lent": _Key(cap),
        "peers": _Key(r.peers),
        "windows": _Key(r.windows),
        "min_free_disk_gb": _Key(cap),
        "advertise": _Key(r.flag),
    }
    require_keys = {
        "cpus": _Key(r.positive),
        "memory_mb": _Key(r.count),
        "disk_gb": _Key(r.count),
    }
    place_keys = {
        "max_rtt_ms": _Key(r.rtt),
        "sites": _Key(r.sites),
    }

    def lenders(path: str, v: Any) -> tuple[tuple[str, Location], ...]:
        if v is None:
            return ()
        if not isinstance(v, dict):
            raise r.wrong(path, v, "a mapping of lender domain names to {max_rtt_ms, sites}")
        return tuple((str(name), Location(**r.section(f"{path}.{name}", rule, place_keys)))
                     for name, rule in v.items())

    location_keys = {**place_keys, "co_located": _Key(r.flag), "lenders": _Key(lenders)}
    borrowing_keys = {
        "enabled": _Key(r.flag),
        "max_borrowed": _Key(cap),
        "require": _Key(lambda p, v: r.section(p, v, require_keys)),
        "accept_reclamation": _Key(r.modes),
        "min_lease_s": _Key(r.seconds),
        "windows": _Key(r.windows),
        "location": _Key(lambda p, v: Location(**r.section(p, v, location_keys))),
    }
    reclamation_keys = {
        "mode": _Key(r.mode),
        "lease_s": _Key(r.seconds),
        "per_interval": _Key(r.positive),
        "drain_deadline_s": _Key(r.deadline),
        "max_job_s": _Key(r.job_cap),
    }
    top_keys = {
        "timezone": _Key(r.timezone),
        "lending": _Key(lambda p, v: r.section(p, v, lending_keys)),
        "borrowing": _Key(lambda p, v: r.section(p, v, borrowing_keys)),
        "reclamation": _Key(lambda p, v: r.section(p, v, reclamation_keys)),
    }
    top = r.section("", data, top_keys)
    borrowing = dict(top.get("borrowing", {}))
    if "require" in borrowing:
        borrowing["require"] = Requirements(**borrowing["require"])
    policy = DomainPolicy(
        lending=LendingPolicy(**top.get("lending", {})),
        borrowing=BorrowingPolicy(**borrowing),
        reclamation=ReclamationPolicy(Terms(**top.get("reclamation", {}))),
    )
    if "timezone" in top:
        policy = DomainPolicy(policy.lending, policy.borrowing, policy.reclamation, top["timezone"])
    return policy


def load_policy(path: str | Path) -> DomainPolicy:
    """Read and validate a policy file; ConfigError (one line) on any problem."""
    path = Path(path)
    data = read_yaml_file(path, "policy file", "give the path of a YAML policy (see "
                          "docs/examples/policy.yml)", "the policy must be a YAML mapping",
                          ConfigError)
    return parse_policy(data, str(path))
