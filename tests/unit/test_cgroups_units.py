"""Parsing and the plain-data types of cgroups/ (no root, no kernel)."""
from __future__ import annotations

import pytest

from cgroups import (UNLIMITED, Beancounter, CgroupError, IoLimit, Resources, Usage,
                     build_beancounters, cpu_shares_to_weight, cpu_weight_to_shares,
                     format_beancounters, parse_count, parse_cpulist, parse_limit, parse_size)


@pytest.mark.parametrize("text,expected", [
    ("64M", 64 << 20), ("64m", 64 << 20), ("64MB", 64 << 20), ("64MiB", 64 << 20),
    ("64mib", 64 << 20), ("1G", 1 << 30), ("2T", 2 << 40), ("4k", 4096), ("4096", 4096),
    ("4096B", 4096), ("0", 0), (" 1.5G ", 3 << 29), ("unlimited", UNLIMITED),
    ("UNLIMITED", UNLIMITED), ("max", UNLIMITED),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1Q", "", "-5M", "M", "64iB", "1.5.3G", "12 M B", "0x10"])
def test_parse_size_errors(text: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_size(text)
    assert str(e.value) == (f"invalid size '{text}': use a number with an optional K, M, G "
                            "or T suffix, or 'unlimited'")


def test_parse_count() -> None:
    assert parse_count("20") == 20
    assert parse_count("unlimited") == UNLIMITED
    with pytest.raises(ValueError, match="invalid count '2k'"):
        parse_count("2k")


def test_parse_limit() -> None:
    assert parse_limit("80:100") == (80, 100)
    assert parse_limit("100") == (100, 100)
    assert parse_limit("unlimited") == (UNLIMITED, UNLIMITED)
    assert parse_limit("80:unlimited") == (80, UNLIMITED)
    assert parse_limit("256M:512M", size=True) == (256 << 20, 512 << 20)
    assert parse_limit("1G", size=True) == (1 << 30, 1 << 30)
    with pytest.raises(ValueError, match="barrier is above the limit"):
        parse_limit("100:80")
    with pytest.raises(ValueError, match="barrier is above the limit"):
        parse_limit("unlimited:80")
    with pytest.raises(ValueError, match="barrier:limit"):
        parse_limit("1:2:3")
    with pytest.raises(ValueError, match="invalid count"):
        parse_limit("64M:128M")          # sizes need size=True
    with pytest.raises(ValueError, match="invalid size"):
        parse_limit("1Q:2", size=True)


def test_parse_cpulist() -> None:
    assert parse_cpulist("0-2,5") == [0, 1, 2, 5]
    assert parse_cpulist("3\n") == [3]
    assert parse_cpulist("") == []
    with pytest.raises(ValueError):
        parse_cpulist("2-1")
    with pytest.raises(ValueError):
        parse_cpulist("a")


def test_cpu_weight_conversion_matches_systemd() -> None:
    assert cpu_weight_to_shares(100) == 1024
    assert cpu_weight_to_shares(1) == 10
    assert cpu_weight_to_shares(10000) == 102400
    assert cpu_weight_to_shares(50) == 512
    assert cpu_shares_to_weight(1024) == 100
    assert cpu_shares_to_weight(2) == 1
    assert cpu_shares_to_weight(262144) == 10000


@pytest.mark.parametrize("kwargs,match", [
    ({"cpuset": "0-a"}, "cpuset"),
    ({"cpu_quota_pct": 0}, "cpu_quota_pct"),
    ({"cpu_weight": 0}, "cpu_weight"),
    ({"cpu_weight": 10001}, "cpu_weight"),
    ({"memory_max": -5}, "memory_max"),
    ({"pids_max": True}, "pids_max"),
    ({"io_weight": 5}, "io_weight"),
    ({"io_limits": (IoLimit("8:0", rbps=1), IoLimit("8:0", wbps=1))}, "one entry"),
])
def test_resources_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(CgroupError, match=match):
        Resources(**kwargs)


def test_resources_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        Resources(cpu_weight=0)


def test_io_limit_validation() -> None:
    with pytest.raises(CgroupError, match="MAJOR:MINOR"):
        IoLimit("sda")
    with pytest.raises(CgroupError, match="rbps"):
        IoLimit("8:0", rbps=0)
    assert IoLimit("8:0", wbps=5, riops=UNLIMITED).items() == [("wbps", 5), ("riops", -1)]


def test_resources_merge_and_dict_roundtrip() -> None:
    a = Resources(memory_max=1 << 30, pids_max=100)
    b = a.merged(Resources(pids_max=UNLIMITED, cpuset="0"))
    assert b == Resources(memory_max=1 << 30, pids_max=UNLIMITED, cpuset="0")
    r = Resources(cpuset="0-1", io_limits=(IoLimit("8:0", rbps=1000),))
    d = r.as_dict()
    assert d == {"cpuset": "0-1", "io_limits": [
        {"device": "8:0", "rbps": 1000, "wbps": None, "riops": None, "wiops": None}]}
    assert Resources.from_dict(d) == r
    with pytest.raises(CgroupError, match="unknown"):
        Resources.from_dict({"memroy_max": 1})
    # a list given for io_limits is frozen into a tuple (hashable, comparable)
    lims = [IoLimit("8:0", rbps=1)]
    assert Resources(io_limits=lims).io_limits == (IoLimit("8:0", rbps=1),)  # type: ignore[arg-type]


def test_beancounters_from_usage_and_limits() -> None:
    u = Usage(cpu_seconds=1.5, cpu_nr_throttled=7, memory_current=10, memory_peak=20,
              memory_failcnt=3, pids_current=4, pids_peak=9, pids_failcnt=2,
              io_read_bytes=100, io_write_bytes=50)
    rows = {b.name: b for b in build_beancounters(
        u, Resources(memory_max=100, memory_high=80, pids_max=20, cpu_quota_pct=50))}
    assert rows["physpages"] == Beancounter("physpages", 10, 20, 80, 100, 3)
    assert rows["swappages"] == Beancounter("swappages", 0, 0, UNLIMITED, UNLIMITED, 0)
    assert rows["numproc"] == Beancounter("numproc", 4, 9, 20, 20, 2)
    assert rows["cpu"] == Beancounter("cpu", 1_500_000, 1_500_000, 50, 50, 7)
    assert rows["io"].held == 150
    text = format_beancounters(list(rows.values()), 101)
    assert "101:" in text and "9223372036854775807" in text
    assert text.splitlines()[0].split() == ["uid", "resource", "held", "maxheld", "barrier",
                                            "limit", "failcnt"]
