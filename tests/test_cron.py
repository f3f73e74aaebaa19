"""Cron expressions: parsing as Vixie cron does, and next fire times across DST changes."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from easytask.cron import MACROS, Cron, missed_fire

BERLIN = ZoneInfo("Europe/Berlin")


def local(text: str, fold: int = 0) -> datetime:
    """A Berlin wall time from 'YYYY-MM-DD HH:MM'."""
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN, fold=fold)


@pytest.mark.parametrize(
    ("expr", "start", "fold", "expected"),
    [
        ("0 3 * * *", "2024-06-01 12:00", 0, "2024-06-02T03:00:00+02:00"),
        ("*/15 * * * *", "2024-06-01 12:07", 0, "2024-06-01T12:15:00+02:00"),
        ("*/15 * * * *", "2024-06-01 12:15", 0, "2024-06-01T12:30:00+02:00"),
        ("*/15 * * * *", "2024-06-01 12:15:59", 0, "2024-06-01T12:30:00+02:00"),
        ("5-20/5 * * * *", "2024-06-01 12:16", 0, "2024-06-01T12:20:00+02:00"),
        ("@yearly", "2024-06-01 12:00", 0, "2025-01-01T00:00:00+01:00"),
        ("@hourly", "2024-06-01 12:00", 0, "2024-06-01T13:00:00+02:00"),
        ("0 0 31 * *", "2024-04-01 00:00", 0, "2024-05-31T00:00:00+02:00"),
        ("0 0 29 2 *", "2024-03-01 00:00", 0, "2028-02-29T00:00:00+01:00"),
        ("0 9 * jan,jul mon-fri", "2024-06-01 00:00", 0, "2024-07-01T09:00:00+02:00"),
        ("0 0 * * 7", "2024-06-01 00:00", 0, "2024-06-02T00:00:00+02:00"),
        ("0 0 * * SUN", "2024-06-01 00:00", 0, "2024-06-02T00:00:00+02:00"),
        # Day of month and day of week both restricted: either matches (Friday the 5th here).
        ("0 0 13 * 5", "2024-01-01 00:00", 0, "2024-01-05T00:00:00+01:00"),
        # A field starting with '*' makes it "and": the 1st/11th/21st/31st that is a Monday.
        ("0 0 */10 * 1", "2024-01-01 00:00", 0, "2024-03-11T00:00:00+01:00"),
        # Spring forward (31 Mar 2024, 02:00 -> 03:00): 02:30 does not exist that day.
        ("30 2 * * *", "2024-03-30 12:00", 0, "2024-04-01T02:30:00+02:00"),
        ("0 3 * * *", "2024-03-31 01:00", 0, "2024-03-31T03:00:00+02:00"),
        ("* * * * *", "2024-03-31 01:59", 0, "2024-03-31T03:00:00+02:00"),
        ("0 * * * *", "2024-03-31 01:00", 0, "2024-03-31T03:00:00+02:00"),
        # Fall back (27 Oct 2024, 03:00 -> 02:00): 02:30 happens twice and fires once, the first time.
        ("30 2 * * *", "2024-10-27 01:00", 0, "2024-10-27T02:30:00+02:00"),
        ("30 2 * * *", "2024-10-27 02:30", 0, "2024-10-28T02:30:00+01:00"),
        ("30 2 * * *", "2024-10-27 02:10", 1, "2024-10-28T02:30:00+01:00"),
        ("0 * * * *", "2024-10-27 02:00", 0, "2024-10-27T03:00:00+01:00"),
        ("* * * * *", "2024-10-27 02:59", 0, "2024-10-27T03:00:00+01:00"),
        ("0 3 * * *", "2024-10-27 00:00", 0, "2024-10-27T03:00:00+01:00"),
    ],
)  # fmt: skip
def test_next_after(expr: str, start: str, fold: int, expected: str) -> None:
    """The next fire time is strictly later, on the local wall clock, skipping or merging DST hours."""
    assert Cron.parse(expr).next_after(local(start, fold)).isoformat() == expected


def test_next_after_converts_to_the_given_zone() -> None:
    """A UTC time is read in the schedule's zone, and the answer is in that zone."""
    now = datetime(2024, 6, 1, 0, 30, tzinfo=UTC)  # 02:30 in Berlin
    fire = Cron.parse("0 3 * * *").next_after(now, BERLIN)
    assert fire.isoformat() == "2024-06-01T03:00:00+02:00"
    assert fire.astimezone(UTC) == datetime(2024, 6, 1, 1, 0, tzinfo=UTC)


def test_next_after_needs_an_aware_time() -> None:
    """A naive datetime is refused: it has no time zone to read the schedule in."""
    with pytest.raises(ValueError, match="aware"):
        Cron.parse("* * * * *").next_after(datetime(2024, 1, 1))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 3 * *", "a cron expression has 5 fields (minute hour day-of-month month day-of-week), '0 3 * *' has 4"),
        ("0 3 * * * *", "a cron expression has 5 fields (minute hour day-of-month month day-of-week), '0 3 * * * *' has 6"),
        ("61 * * * *", "invalid minute field '61': 61 is out of range 0-59"),
        ("0 24 * * *", "invalid hour field '24': 24 is out of range 0-23"),
        ("0 0 0 * *", "invalid day-of-month field '0': 0 is out of range 1-31"),
        ("0 0 * 13 *", "invalid month field '13': 13 is out of range 1-12"),
        ("0 0 * * 8", "invalid day-of-week field '8': 8 is out of range 0-7"),
        ("0 0 * * fry", "invalid day-of-week field 'fry': 'fry' is not a number or a weekday name"),
        ("0 0 * jan-foo *", "invalid month field 'jan-foo': 'foo' is not a number or a month name"),
        ("x * * * *", "invalid minute field 'x': 'x' is not a number"),
        ("*/0 * * * *", "invalid minute field '*/0': the step must be at least 1"),
        ("*/x * * * *", "invalid minute field '*/x': step 'x' is not a number"),
        ("5-1 * * * *", "invalid minute field '5-1': range '5-1' goes backwards"),
        ("1,,2 * * * *", "invalid minute field '1,,2': empty list item"),
        ("1- * * * *", "invalid minute field '1-': missing value"),
        ("0 0 30 2 *", "'0 0 30 2 *' never fires: no selected month has day 30"),
        ("@reboot", "unknown cron macro '@reboot' (use one of @yearly @annually @monthly @weekly @daily @midnight @hourly)"),
    ],
)  # fmt: skip
def test_parse_errors(text: str, message: str) -> None:
    """A wrong expression is a ValueError that names the field and the problem."""
    with pytest.raises(ValueError) as exc:
        Cron.parse(text)
    assert str(exc.value) == message


@pytest.mark.parametrize("macro", sorted(MACROS))
def test_macros_are_their_expansions(macro: str) -> None:
    """Each @macro matches exactly what its five-field expansion matches."""
    a, b = Cron.parse(macro), Cron.parse(MACROS[macro])
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays) == (
        b.minutes, b.hours, b.days, b.months, b.weekdays,
    )  # fmt: skip
    assert str(a) == macro


@pytest.mark.parametrize(
    ("expr", "weekdays"),
    [("* * * * *", set(range(7))), ("* * * * 0,7", {0}), ("* * * * 5-7", {5, 6, 0}), ("* * * * */2", {0, 2, 4, 6})],
)  # fmt: skip
def test_day_of_week_seven_is_sunday(expr: str, weekdays: set[int]) -> None:
    """Day of week 7 is Sunday, as 0 is."""
    assert Cron.parse(expr).weekdays == weekdays


def test_missed_fire() -> None:
    """A fire time between the last one and now was missed; none when now comes before it."""
    cron = Cron.parse("0 3 * * *")
    last = local("2024-06-01 03:00")
    assert missed_fire(cron, last, local("2024-06-02 02:59")) is None
    assert missed_fire(cron, last, local("2024-06-03 09:00")) == local("2024-06-02 03:00")


def test_rare_dates_are_found_quickly() -> None:
    """The search skips by field: a Feb 29th that is a Sunday, decades away, takes milliseconds."""
    cron = Cron.parse("0 0 29 2 */7")  # '*' in day-of-week: the 29th *and* a Sunday
    started = time.perf_counter()
    fire = cron.next_after(local("2024-03-01 00:00"))
    assert fire.isoformat() == "2032-02-29T00:00:00+01:00"
    assert time.perf_counter() - started < 1.0
