"""One way to read what people and peers write: the policy file, the broker's config and the
messages between brokers all check their input with a :class:`Reader`.

Every failure is one line that names the value by its path and says what was given and what
is expected::

    SOURCE: lending.fraction_idle: got 1.5; expected a number from 0 to 1 (paper: 0.5)
    SOURCE: unknown key 'rate_limit.per_second'; allowed under rate_limit: burst, per_s
    SOURCE: lending.hosts[0]: missing key(s) account, address
    request.needs.cpus: got 0; expected an integer from 1 to 4096

A reader raises its own error type (:class:`~broker.errors.ConfigError` for files,
``MessageError`` for messages), a :class:`~broker.errors.UserError` that the command line
prints without a traceback. :func:`show` prints any value short and on one line, whatever it
holds (a huge integer, NaN, ten thousand characters).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import yaml

from broker.errors import UserError

#: Names of domains, hosts, contracts, accounts and message ids: short, printable, shell- and
#: URL-safe. (``\Z``, not ``$``: a ``$`` also matches before a trailing newline.)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
NAME = "a name of 1-63 letters, digits, '.', '_' or '-'"


def kind_of(value: Any) -> str:
    """The JSON/YAML kind of ``value``: an object, an array, a string, a number, ..."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


def show(value: Any) -> str:
    """``value`` as an error message shows it: short, one line, whatever it holds."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        if abs(value) < 10**20:
            return str(value)
        if value.bit_length() < 13_000:  # str() of an int refuses more than 4300 digits
            return f"an integer of {len(str(abs(value)))} digits"
        return "an integer of thousands of digits"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, str):
        if len(value) <= 40:
            return repr(value)
        return f"{value[:40]!r}... ({len(value)} characters)"
    return kind_of(value)


def names(keys: Iterable[Any]) -> str:
    """Keys for an error message; odd ones quoted, at most ten."""
    keys = list(keys)
    shown = [k if isinstance(k, str) and NAME_RE.match(k) and len(k) <= 40 else show(k)
             for k in keys[:10]]
    more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
    return ", ".join(shown) + more


def _bound(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


class Reader:
    """Checks of values found at a path. Each returns the value read or raises ``error``."""

    error: type[UserError] = UserError
    key = "key"  # what the entries of a mapping are called ("field" in messages)
    mapping_kind = "a mapping"  # what a mapping is called ("an object" in messages)

    def __init__(self, source: str = "") -> None:
        self.source = source

    # -- failing --------------------------------------------------------------------------
    def fail(self, path: str, message: str) -> UserError:
        where = f"{self.source}: " if self.source else ""
        return self.error(f"{where}{path or '(top level)'}: {message}")

    def wrong(self, path: str, value: Any, expected: str) -> UserError:
        return self.fail(path, f"got {self.kind(value)}; expected {expected}")

    def kind(self, value: Any) -> str:
        """How a wrong value is shown: itself for scalars, its kind for containers."""
        if isinstance(value, dict):
            return self.mapping_kind
        if isinstance(value, (list, tuple)):
            return "an array" if self.key == "field" else "a list"
        return show(value)

    # -- containers ------------------------------------------------------------------------
    def mapping(self, raw: Any, path: str, keys: Collection[str],
                required: Collection[str] = ()) -> dict[Any, Any]:
        """A mapping with only ``keys`` (in the order given, for the message) and every one
        of ``required``."""
        if not isinstance(raw, dict):
            listed = f" with {self.key}s {', '.join(map(str, keys))}" if keys else ""
            raise self.wrong(path, raw, f"{self.mapping_kind}{listed}")
        extra = [k for k in raw if k not in keys]
        if extra:
            first = extra[0]
            key = first if isinstance(first, str) and NAME_RE.match(first) else show(first)
            at = f"{path}.{key}" if path else key
            under = f" under {path}" if path else ""
            more = f" (and {names(extra[1:])})" if len(extra) > 1 else ""
            where = f"{self.source}: " if self.source else ""
            raise self.error(f"{where}unknown {self.key} {at!r}{more}; allowed{under}: "
                             f"{', '.join(map(str, keys))}")
        missing = [k for k in required if k not in raw]
        if missing:
            raise self.fail(path, f"missing {self.key}(s) {', '.join(map(str, missing))}")
        return raw

    def array(self, raw: Any, path: str, minimum: int = 0, maximum: int | None = None) -> list:
        if not isinstance(raw, (list, tuple)):
            raise self.wrong(path, raw, self._items(minimum, maximum))
        if len(raw) < minimum or (maximum is not None and len(raw) > maximum):
            raise self.fail(path, f"got {len(raw)} items; expected {self._items(minimum, maximum)}")
        return list(raw)

    def _items(self, minimum: int, maximum: int | None) -> str:
        kind = "an array" if self.key == "field" else "a list"
        if maximum is not None:
            return f"{kind} of {minimum} to {maximum} items"
        return f"{kind} of at least {minimum} item(s)" if minimum else kind

    # -- scalars ----------------------------------------------------------------------------
    def boolean(self, raw: Any, path: str) -> bool:
        if not isinstance(raw, bool):
            raise self.wrong(path, raw, "true or false")
        return raw

    def integer(self, raw: Any, path: str, minimum: int, maximum: int | None = None,
                expected: str = "") -> int:
        if (isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum
                or (maximum is not None and raw > maximum)):
            what = expected or (f"an integer from {minimum} to {maximum}" if maximum is not None
                                else f"an integer >= {minimum}")
            raise self.wrong(path, raw, what)
        return raw

    def number(self, raw: Any, path: str, minimum: float, maximum: float, *,
               above: bool = False, expected: str = "") -> float:
        """A finite number from ``minimum`` (excluded when ``above``) to ``maximum``. An int is
        compared as an int (exactly, and without the OverflowError that converting one too
        large for a float would raise)."""
        if (isinstance(raw, bool) or not isinstance(raw, (int, float))
                or (isinstance(raw, float) and not math.isfinite(raw))
                or raw > maximum or raw < minimum or (above and raw == minimum)):
            what = expected or (f"a number > {_bound(minimum)} and at most {_bound(maximum)}"
                                if above else
                                f"a number from {_bound(minimum)} to {_bound(maximum)}")
            raise self.wrong(path, raw, what)
        return float(raw)

    def name(self, raw: Any, path: str) -> str:
        if not isinstance(raw, str) or not NAME_RE.match(raw):
            raise self.wrong(path, raw, NAME)
        return raw

    def text(self, raw: Any, path: str, limit: int | None = None, empty: bool = False) -> str:
        if not isinstance(raw, str) or (not empty and not raw):
            raise self.wrong(path, raw, "a non-empty string" if not empty else "a string")
        if limit is not None and len(raw) > limit:
            raise self.fail(path, f"got {len(raw)} characters; expected a string of at most "
                                  f"{limit} characters")
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (\ud800 in JSON) cannot be stored
            raise self.fail(path, f"character {exc.start} is a lone UTF-16 surrogate; "
                                  "send text that is valid Unicode") from None
        return raw

    def choice(self, raw: Any, path: str, choices: Collection[str]) -> str:
        if not isinstance(raw, str) or raw not in choices:
            raise self.wrong(path, raw, f"one of {', '.join(choices)}")
        return raw


def read_yaml_file(path: Path, what: str, hint: str, shape: str,
                   error: type[UserError]) -> Any:
    """The parsed YAML of a file a person wrote (``what``: "policy file", ...), or ``error``
    with one line: missing (then ``hint``, what to give instead), unreadable, not YAML (where,
    and ``shape``, what the file must be), or a number Python will not read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} not found (no such file); {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} cannot be read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise error(f"{what} {path} is not valid YAML{where}: {problem}; {shape}") from None
    except ValueError:  # Python reads no integer of more than 4300 digits
        raise error(f"{what} {path}: a number in it has thousands of digits; no setting "
                    "takes one that large") from None
