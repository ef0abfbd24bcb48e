"""Backup schedules: their text forms, checked, and when one is next due. Pure: no I/O.

Accepted forms (the host's local time, as cron):

    hourly                 at minute 0 of every hour
    daily@HH:MM            every day at HH:MM
    weekly@DAY HH:MM       every week on DAY (sun, mon, ... sat) at HH:MM
    M H DOM MON DOW        cron's five fields: each `*`, `N`, `N-M`, `*/S`, `N-M/S` or a comma
                           list of those; DOW 0-7 (0 and 7 are Sunday) or sun..sat, MON 1-12 or
                           jan..dec; as in cron, when both DOM and DOW are restricted either
                           one matching is enough

A schedule is hostile input (a tenant's operator sets it): a field out of range, a step of 0, a
list of more than MAX_ITEMS items, more than MAX_LENGTH characters, or a schedule that is never
due (`0 0 31 2 *`) is refused with InvalidRequest naming the field and these forms; next_due()
never loops for long (it walks days, at most MAX_DAYS of them).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ctd.errors import InvalidRequest

FORMS = ("accepted: 'hourly', 'daily@HH:MM', 'weekly@DAY HH:MM' (DAY sun..sat) or cron's "
         "'M H DOM MON DOW' (e.g. '30 2 * * *'), in the host's local time; 'none' removes it")
MAX_LENGTH = 200
MAX_ITEMS = 60
MAX_DAYS = 8 * 366   # a 29 February schedule is due at least once in 8 years
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
WEEKDAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
          ("day of week", 0, 7))


@dataclass(frozen=True)
class Schedule:
    """A checked schedule: the text as given and the values each field allows."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]   # 0 = Sunday
    any_day: bool              # DOM was '*'
    any_weekday: bool          # DOW was '*'

    def day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow   # cron: both restricted, either one

    def next_due(self, after: float) -> float | None:
        """The first due time strictly after `after` (epoch seconds), or None within MAX_DAYS."""
        start = dt.datetime.fromtimestamp(after).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        day = start.date()
        for _ in range(MAX_DAYS):
            if self.day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        when = dt.datetime.combine(day, dt.time(hour, minute))
                        if when >= start:
                            return when.timestamp()
            day += dt.timedelta(days=1)
        return None


def _bad(text: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"backup_schedule {text!r}: {why}; {FORMS}")


def _number(text: str, part: str, field: str, names: tuple[str, ...], first: int) -> int:
    low = part.lower()
    if names and low in names:
        return names.index(low) + first
    if not part.isdigit() or len(part) > 2:
        raise _bad(text, f"{field} {part!r} is not a number")
    return int(part)


def _field(text: str, value: str, index: int) -> frozenset[int]:
    field, low, high = FIELDS[index]
    names, first = (DAYS, 0) if index == 4 else (MONTHS, 1) if index == 3 else ((), 0)
    items = value.split(",")
    if len(items) > MAX_ITEMS:
        raise _bad(text, f"{field} lists more than {MAX_ITEMS} items")
    allowed: set[int] = set()
    for item in items:
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or not 1 <= int(step_text) <= high:
                raise _bad(text, f"{field} step {step_text!r} must be a number from 1 to {high}")
            step = int(step_text)
        if span == "*":
            start, end = low, high
        else:
            a, dash, b = span.partition("-")
            start = _number(text, a, field, names, first)
            end = _number(text, b, field, names, first) if dash else (high if step_text else start)
        if not low <= start <= end <= high:
            raise _bad(text, f"{field} {item!r} is out of range ({low}-{high})")
        allowed.update(range(start, end + 1, step))
    if index == 4 and 7 in allowed:
        allowed = (allowed - {7}) | {0}
    return frozenset(allowed)


def _clock(text: str, value: str) -> tuple[str, str]:
    hour, colon, minute = value.partition(":")
    if not colon or not hour.isdigit() or not minute.isdigit() or len(minute) != 2 or len(hour) > 2:
        raise _bad(text, f"{value!r} is not a time HH:MM")
    return str(int(minute)), str(int(hour))


def _cron_fields(text: str) -> list[str]:
    """The five cron fields a schedule stands for."""
    low = text.strip().lower()
    if low == "hourly":
        return ["0", "*", "*", "*", "*"]
    if low.startswith("daily@"):
        minute, hour = _clock(text, low[len("daily@"):].strip())
        return [minute, hour, "*", "*", "*"]
    if low.startswith("weekly@"):
        parts = low[len("weekly@"):].split()
        if len(parts) != 2:
            raise _bad(text, "weekly@ needs a day and a time, e.g. 'weekly@sun 03:00'")
        if parts[0] not in DAYS and parts[0] not in WEEKDAY_NAMES:
            raise _bad(text, f"{parts[0]!r} is not a day of the week (sun..sat)")
        minute, hour = _clock(text, parts[1])
        return [minute, hour, "*", "*", parts[0][:3]]
    fields = text.split()
    if len(fields) != 5:
        raise _bad(text, f"it has {len(fields)} fields, cron has 5")
    return fields


def parse_schedule(text: object) -> Schedule:
    """A schedule's text checked (InvalidRequest naming the field and the accepted forms)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"backup_schedule must be a text; {FORMS}")
    if len(text) > MAX_LENGTH or not text.isprintable():
        raise InvalidRequest(f"backup_schedule must be at most {MAX_LENGTH} printable characters; {FORMS}")
    fields = _cron_fields(text)
    values = [_field(text, value, i) for i, value in enumerate(fields)]
    schedule = Schedule(text=text.strip(), minutes=values[0], hours=values[1], days=values[2],
                        months=values[3], weekdays=values[4], any_day=fields[2] == "*",
                        any_weekday=fields[4] == "*")
    if schedule.next_due(dt.datetime(2000, 1, 1).timestamp()) is None:
        raise _bad(text, "it is never due (no such day)")
    return schedule
