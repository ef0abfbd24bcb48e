"""Backup schedules (ctd/instance/schedule.py), the create/set checks of backup_schedule and
backup_keep, retention's choice of what stays (backups.needed) and the chain fields of a backup
header (format.validate_header): pure logic, no daemon."""

from __future__ import annotations

import datetime as dt

import pytest

from ctd.errors import InvalidRequest
from ctd.instance.backups import check_settings, needed
from ctd.instance.schedule import parse_schedule
from ctd.state.backups import BackupRow
from ctd.storage.backup import validate_header


def at(*parts: int) -> float:
    return dt.datetime(*parts).timestamp()  # type: ignore[arg-type]


def due(text: str, after: float) -> dt.datetime:
    when = parse_schedule(text).next_due(after)
    assert when is not None
    return dt.datetime.fromtimestamp(when)


@pytest.mark.parametrize("text, after, expected", [
    ("hourly", at(2031, 3, 3, 10, 0), dt.datetime(2031, 3, 3, 11, 0)),      # strictly after
    ("daily@02:00", at(2031, 3, 3, 1, 59, 59), dt.datetime(2031, 3, 3, 2, 0)),
    ("daily@02:00", at(2031, 3, 3, 2, 0, 10), dt.datetime(2031, 3, 4, 2, 0)),
    ("weekly@sun 03:00", at(2031, 3, 3, 0, 0), dt.datetime(2031, 3, 9, 3, 0)),  # 3 March 2031: a Monday
    ("weekly@Saturday 23:59", at(2031, 3, 3, 0, 0), dt.datetime(2031, 3, 8, 23, 59)),
    ("*/20 9-17 * * 1-5", at(2031, 3, 7, 17, 41), dt.datetime(2031, 3, 10, 9, 0)),  # Fri -> Mon
    ("0 0 29 2 *", at(2031, 3, 1, 0, 0), dt.datetime(2032, 2, 29, 0, 0)),
    ("0 4 1 * sun", at(2031, 3, 3, 0, 0), dt.datetime(2031, 3, 9, 4, 0)),   # cron: DOM or DOW
    ("30 2 * jan,jul 7", at(2031, 3, 3, 0, 0), dt.datetime(2031, 7, 6, 2, 30)),
])
def test_next_due(text: str, after: float, expected: dt.datetime) -> None:
    assert due(text, after) == expected


@pytest.mark.parametrize("text, words", [
    ("", "must be a text"), ("daily@2", "not a time"), ("daily@24:00", "hour"), ("0 0 31 2 *", "never due"),
    ("61 * * * *", "out of range"), ("*/0 * * * *", "step"), ("5-1 * * * *", "out of range"),
    ("x * * * *", "not a number"), ("weekly@sun", "needs a day and a time"), ("* *", "2 fields"),
    ("1," * 61 + "1 * * * *", "more than"), ("a" * 300, "at most 200"), ("0 0 * * *\n", "printable"),
])
def test_bad_schedules_name_the_field_and_the_forms(text: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_schedule(text)
    assert words in err.value.message and "daily@HH:MM" in err.value.message


def test_create_and_set_fields() -> None:
    assert check_settings({"backup_schedule": "none", "backup_keep": "3"}).schedule == ""
    assert check_settings({"backup_keep": "3"}).keep == 3
    assert not check_settings({}).given
    for keep in (0, 1001, True, "x", 2.5):
        with pytest.raises(InvalidRequest, match="backup_keep"):
            check_settings({"backup_keep": keep})


def row(n: int, parent: int | None) -> BackupRow:
    return BackupRow(id=f"{n:032x}", instance_id=1, file=f"/b/{n}", kind="full" if parent is None else "incremental",
                     parent=None if parent is None else f"{parent:032x}", created=n, size=1, scheduled=True)


def test_retention_keeps_whole_prefixes_of_chains() -> None:
    rows = [row(1, None), row(2, 1), row(3, 2), row(4, None), row(5, 4)]
    assert needed(rows, 2) == {f"{n:032x}" for n in (4, 5)}
    assert needed(rows, 3) == {f"{n:032x}" for n in (1, 2, 3, 4, 5)}   # 3 needs 2 and 1
    assert needed(rows, 1) == {f"{5:032x}", f"{4:032x}"}


BASE = {"format": "ctd-backup", "version": 1, "driver": "btrfs-send", "member": "rootfs.btrfs.zst", "name": "x"}


@pytest.mark.parametrize("extra, words", [
    ({"kind": "incremental", "id": "a" * 32}, "parent must be"),
    ({"kind": "incremental", "id": "a" * 32, "parent": {"id": "b" * 32, "file": "../etc/passwd"}}, "parent must be"),
    ({"kind": "incremental", "id": "a" * 32, "parent": {"id": "b" * 32, "file": ".hidden"}}, "parent must be"),
    ({"kind": "incremental", "id": "a" * 32, "parent": {"id": "B" * 32, "file": "f"}}, "parent must be"),
    ({"kind": "full", "id": "a" * 32, "parent": {"id": "b" * 32, "file": "f"}}, "names a parent"),
    ({"kind": "delta"}, "kind"), ({"id": "../x"}, "id is not"),
    ({"kind": "incremental", "parent": {"id": "b" * 32, "file": "f"}}, "with an id"),
])
def test_hostile_chain_fields_in_a_header_are_refused(extra: dict, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        validate_header({**BASE, **extra})


def test_a_chain_header_is_accepted() -> None:
    header = validate_header({**BASE, "kind": "incremental", "id": "a" * 32,
                              "parent": {"id": "b" * 32, "file": "web-20310303-020000-abc123.ctdbackup"}})
    assert header["parent"]["file"].endswith(".ctdbackup")
    assert validate_header(dict(BASE))["kind"] == "full"   # an older ctd's backup: full, no id
