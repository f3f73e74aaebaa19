"""Cron expressions as Vixie cron reads them, and their next fire time in a time zone (pure code)."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

__all__ = ["Cron", "missed_fire"]

FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {n: i + 1 for i, n in enumerate(_MONTHS)},
    {n: i for i, n in enumerate(_DAYS)},
)
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
SEARCH_YEARS = 100  # next_after gives up after this many years without a match
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the most a month can have


@dataclass(frozen=True)
class Cron:
    """A parsed 5-field cron expression: the sets of minutes, hours, days, months and weekdays."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday (7 is folded into 0)
    day_star: bool  # the day-of-month field starts with '*'
    weekday_star: bool  # the day-of-week field starts with '*'

    def __str__(self) -> str:
        return self.text

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Parse `m h dom mon dow` or an @macro; ValueError names the field that is wrong."""
        if not isinstance(text, str):
            raise ValueError(f"a cron expression must be a string, not {type(text).__name__}")
        source = text.strip()
        expanded = source
        if source.startswith("@"):
            if source.lower() not in MACROS:
                known = " ".join(MACROS)
                raise ValueError(f"unknown cron macro {source!r} (use one of {known})")
            expanded = MACROS[source.lower()]
        parts = expanded.split()
        if len(parts) != 5:
            raise ValueError(
                f"a cron expression has 5 fields (minute hour day-of-month month day-of-week),"
                f" {source!r} has {len(parts)}"
            )
        sets = [_parse_field(i, part) for i, part in enumerate(parts)]
        weekdays = frozenset(d % 7 for d in sets[4])
        cron = cls(
            text=source,
            minutes=sets[0],
            hours=sets[1],
            days=sets[2],
            months=sets[3],
            weekdays=weekdays,
            day_star=parts[2].startswith("*"),
            weekday_star=parts[4].startswith("*"),
        )
        if cron.weekday_star and not any(
            d <= _MONTH_DAYS[m - 1] for m in cron.months for d in cron.days
        ):
            raise ValueError(
                f"{source!r} never fires: no selected month has day {_join(cron.days)}"
            )
        return cron

    def day_matches(self, year: int, month: int, day: int) -> bool:
        """Whether a date matches the day fields, with Vixie cron's rule for the two of them.

        When both day-of-month and day-of-week are restricted, either may match; when one of
        them starts with '*', both must (so `*/2` in one field still means "and").
        """
        in_days = day in self.days
        in_weekdays = (calendar.weekday(year, month, day) + 1) % 7 in self.weekdays
        if self.day_star or self.weekday_star:
            return in_days and in_weekdays
        return in_days or in_weekdays

    def next_after(self, dt: datetime, tz: tzinfo | None = None) -> datetime:
        """The first fire time strictly after `dt` (aware), in `tz` or else in dt's own time zone.

        Times are matched on the local wall clock. A local time that does not exist (the hour
        skipped when clocks go forward) does not fire; one that happens twice (clocks go back)
        fires once, the first time.
        """
        if dt.tzinfo is None or dt.utcoffset() is None:
            raise ValueError("next_after needs an aware datetime (with a time zone)")
        zone = tz or dt.tzinfo
        after = dt.astimezone(UTC)
        local = dt.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
        candidate = local + timedelta(minutes=1)
        while True:
            candidate = self._next_local(candidate)
            aware = candidate.replace(tzinfo=zone, fold=0)
            in_utc = aware.astimezone(UTC)
            if in_utc.astimezone(zone).replace(tzinfo=None) != candidate:
                # Skipped by a forward clock change: this wall time does not exist today.
                candidate += timedelta(minutes=1)
                continue
            if in_utc <= after:
                # The first pass of a repeated hour, which already went by.
                candidate += timedelta(minutes=1)
                continue
            return aware

    def _next_local(self, start: datetime) -> datetime:
        """The first naive wall time at or after `start` that the fields match, skipping by field."""
        t = start
        limit = start.year + SEARCH_YEARS
        while t.year <= limit:
            if t.month not in self.months:
                t = _first_of_next_month(t)
                continue
            if not self.day_matches(t.year, t.month, t.day):
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                later = [h for h in self.hours if h > t.hour]
                if later:
                    t = t.replace(hour=min(later), minute=0)
                else:
                    t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            if t.minute not in self.minutes:
                later = [m for m in self.minutes if m > t.minute]
                if later:
                    t = t.replace(minute=min(later))
                else:
                    t = t.replace(minute=0) + timedelta(hours=1)
                continue
            return t
        raise ValueError(
            f"{self.text!r} does not fire within {SEARCH_YEARS} years of {start:%Y-%m-%d}"
        )


def missed_fire(
    cron: Cron, last: datetime, now: datetime, tz: tzinfo | None = None
) -> datetime | None:
    """The first fire time after `last` that is not later than `now`, if one was missed."""
    due = cron.next_after(last, tz)
    return due if due.astimezone(UTC) <= now.astimezone(UTC) else None


def _first_of_next_month(t: datetime) -> datetime:
    return datetime(t.year + 1, 1, 1) if t.month == 12 else datetime(t.year, t.month + 1, 1)


def _join(values: frozenset[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


def _parse_field(index: int, text: str) -> frozenset[int]:
    name = FIELDS[index]
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"invalid {name} field {text!r}: empty list item")
        values.update(_parse_item(index, item, text))
    return frozenset(values)


def _parse_item(index: int, item: str, field: str) -> range:
    name = FIELDS[index]
    low, high = _RANGES[index]

    def bad(problem: str) -> ValueError:
        return ValueError(f"invalid {name} field {field!r}: {problem}")

    body, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit():
            raise bad(f"step {step_text!r} is not a number")
        step = int(step_text)
        if step < 1:
            raise bad("the step must be at least 1")
    if body == "*":
        start, end = low, high
    else:
        first, dash, last = body.partition("-")
        start = _value(index, first, bad)
        if dash:
            end = _value(index, last, bad)
            if end < start:
                raise bad(f"range {body!r} goes backwards")
        else:
            # `a/n` means every n-th value from a to the end, as most crons read it.
            end = high if slash else start
    if index == 4 and body == "*":
        end = 6  # Sunday is 0; '*' must not count it twice for steps
    return range(start, end + 1, step)


def _value(index: int, text: str, bad: Callable[[str], ValueError]) -> int:
    low, high = _RANGES[index]
    word = text.lower()
    if word in _NAMES[index]:
        return _NAMES[index][word]
    if not text.isdigit():
        if not text:
            raise bad("missing value")
        if _NAMES[index]:
            kind = "month" if index == 3 else "weekday"
            raise bad(f"{text!r} is not a number or a {kind} name")
        raise bad(f"{text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise bad(f"{value} is out of range {low}-{high}")
    return value
