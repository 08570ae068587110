"""Time-of-day windows (e.g. borrow by day, lend by night), evaluated on a given ``now``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*(?:\s([a-z,\-\s]+))?$", re.IGNORECASE
)
FORMAT = "'HH:MM-HH:MM' optionally followed by days, e.g. '08:00-18:00 mon-fri' or '22:00-06:00'"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """[start, end) in minutes after local midnight on the given weekdays (0 = Monday).

    A window whose end is not after its start runs over midnight (22:00-06:00); its days
    are the days on which it starts.
    """

    start_min: int
    end_min: int
    days: frozenset[int] = frozenset(range(7))

    def contains(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self.start_min < self.end_min:
            return day in self.days and self.start_min <= minute < self.end_min
        if minute >= self.start_min:
            return day in self.days
        return minute < self.end_min and (day - 1) % 7 in self.days


def parse_window(text: str) -> TimeWindow:
    """Parse '08:00-18:00 mon-fri'; raise ValueError saying what was expected."""
    match = _WINDOW.match(text)
    if not match:
        raise ValueError(f"expected {FORMAT}")
    h1, m1, h2, m2, day_text = match.groups()
    h1, m1, h2, m2 = int(h1), int(m1), int(h2), int(m2)
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"hour or minute out of range; expected {FORMAT}")
    days: set[int] = set()
    if day_text:
        for part in day_text.replace(" ", "").lower().split(","):
            ends = part.split("-")
            if len(ends) > 2 or any(e not in DAYS for e in ends):
                raise ValueError(f"unknown day {part!r}; days are {', '.join(DAYS)} or ranges")
            first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
            day = first
            while True:
                days.add(day)
                if day == last:
                    break
                day = (day + 1) % 7
    return TimeWindow(h1 * 60 + m1, h2 * 60 + m2, frozenset(days) if days else frozenset(range(7)))


def in_windows(windows: tuple[TimeWindow, ...], now: float, tz: tzinfo) -> bool:
    """True when no window is set (always) or ``now`` (epoch seconds) falls in one of them."""
    if not windows:
        return True
    local = datetime.fromtimestamp(now, tz)
    return any(w.contains(local) for w in windows)
