"""Read a domain's policy from the YAML file its administrator writes.

Every wrong key, type or value raises :class:`broker.errors.ConfigError` naming the key by its
path (``lending.fraction_idle``), what was given and what is allowed. See
docs/examples/policy.yml for a commented example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from broker.errors import ConfigError
from broker.negotiation.messages import MAX_LEASE_S
from broker.policy.borrowing import BorrowingPolicy
from broker.policy.domain import DomainPolicy
from broker.policy.hosts import Requirements
from broker.policy.lending import LendingPolicy
from broker.policy.reclamation import Mode, ReclamationPolicy, Terms
from broker.policy.windows import FORMAT as WINDOW_FORMAT
from broker.policy.windows import TimeWindow, parse_window

MODES = tuple(m.value for m in Mode)


@dataclass(frozen=True)
class _Key:
    """One allowed key: a checker turning the YAML value (at a path) into the policy value."""

    check: Callable[[str, Any], Any]


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, given: Any, allowed: str) -> ConfigError:
        return ConfigError(
            f"{self.source}: {path}: got {given!r}; allowed: {allowed}"
        )

    # -- checkers -------------------------------------------------------------------------
    def boolean(self, path: str, v: Any) -> bool:
        if not isinstance(v, bool):
            raise self.fail(path, v, "true or false")
        return v

    def count(self, path: str, v: Any, *, none_ok: bool = False) -> int | None:
        if v is None and none_ok:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise self.fail(path, v, "an integer >= 0" + (" or null (no cap)" if none_ok else ""))
        return v

    def seconds(self, path: str, v: Any) -> float:
        # at most what a message's terms.lease_s may carry, or peers would refuse our offers
        if (isinstance(v, bool) or not isinstance(v, (int, float))
                or not 0 <= v <= MAX_LEASE_S):  # NaN fails the comparison too
            raise self.fail(path, v, f"a number of seconds from 0 to {MAX_LEASE_S:.0f}")
        return float(v)

    def fraction(self, path: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise self.fail(path, v, "a number from 0 to 1 (paper: 0.5)")
        return float(v)

    def positive(self, path: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise self.fail(path, v, "an integer >= 1")
        return v

    def windows(self, path: str, v: Any) -> tuple[TimeWindow, ...]:
        if v is None:
            return ()
        if not isinstance(v, list):
            raise self.fail(path, v, f"a list of windows, each {WINDOW_FORMAT}")
        out = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise self.fail(f"{path}[{i}]", item, WINDOW_FORMAT)
            try:
                out.append(parse_window(item))
            except ValueError as exc:
                raise self.fail(f"{path}[{i}]", item, str(exc).removeprefix("expected ")) from None
        return tuple(out)

    def peers(self, path: str, v: Any) -> frozenset[str] | None:
        if v == "all" or v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
            raise self.fail(path, v, "'all' or a list of peer domain names")
        return frozenset(v)

    def mode(self, path: str, v: Any) -> Mode:
        if v not in MODES:
            raise self.fail(path, v, ", ".join(MODES))
        return Mode(v)

    def modes(self, path: str, v: Any) -> frozenset[Mode]:
        if v == "all":
            return frozenset(Mode)
        if not isinstance(v, list):
            raise self.fail(path, v, f"'all' or a list of: {', '.join(MODES)}")
        return frozenset(self.mode(f"{path}[{i}]", m) for i, m in enumerate(v))

    def timezone(self, path: str, v: Any) -> Any:
        if not isinstance(v, str):
            raise self.fail(path, v, "an IANA time zone name such as UTC or America/New_York")
        try:
            return ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail(
                path, v, "an IANA time zone name such as UTC or America/New_York"
            ) from None

    # -- sections -------------------------------------------------------------------------
    def section(self, path: str, data: Any, keys: Mapping[str, _Key]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise self.fail(path or "(top level)", data, f"a mapping with keys {', '.join(keys)}")
        out: dict[str, Any] = {}
        for key, value in data.items():
            full = f"{path}.{key}" if path else str(key)
            if key not in keys:
                raise ConfigError(
                    f"{self.source}: unknown key {full!r}; allowed keys"
                    f"{' under ' + path if path else ''}: {', '.join(keys)}"
                )
            out[str(key)] = keys[key].check(full, value)
        return out


def parse_policy(data: Any, source: str = "policy") -> DomainPolicy:
    """Build a :class:`DomainPolicy` from a parsed YAML mapping (None: all defaults)."""
    r = _Reader(source)
    cap = lambda p, v: r.count(p, v, none_ok=True)  # noqa: E731
    lending_keys = {
        "enabled": _Key(r.boolean),
        "fraction_idle": _Key(r.fraction),
        "min_reserve": _Key(r.count),
        "max_lent": _Key(cap),
        "peers": _Key(r.peers),
        "windows": _Key(r.windows),
    }
    require_keys = {
        "cpus": _Key(r.positive),
        "memory_mb": _Key(r.count),
        "disk_gb": _Key(r.count),
    }
    borrowing_keys = {
        "enabled": _Key(r.boolean),
        "max_borrowed": _Key(cap),
        "require": _Key(lambda p, v: r.section(p, v, require_keys)),
        "accept_reclamation": _Key(r.modes),
        "min_lease_s": _Key(r.seconds),
        "windows": _Key(r.windows),
    }
    reclamation_keys = {
        "mode": _Key(r.mode),
        "lease_s": _Key(r.seconds),
        "per_interval": _Key(r.positive),
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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} not found; give the path of a YAML policy "
                          "(see docs/examples/policy.yml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {path} cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{where}: {problem}; the policy must be a YAML mapping") from None
    return parse_policy(data, str(path))
