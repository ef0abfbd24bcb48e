"""User-facing limits: parsing vzctl forms, cpu picking, cgroups.Resources, sizes for people."""
from __future__ import annotations

import pytest

from cgroups import UNLIMITED, Resources

from ctd import limits
from ctd.errors import InvalidRequest

M = 1 << 20
G = 1 << 30
HOST_CPUS = 4


def norm(raw: object) -> dict[str, int]:
    return limits.normalise(raw, HOST_CPUS)  # type: ignore[arg-type]


def refused(raw: object) -> str:
    with pytest.raises(InvalidRequest) as e:
        norm(raw)
    assert e.value.code == "invalid"
    return e.value.message


@pytest.mark.parametrize("text,expected", [
    ("512M", 512 * M), ("512m", 512 * M), ("1G", G), ("1g", G), ("8192K", 8 * M), ("1.5G", 3 * G // 2),
    ("4M", 4 * M), (str(64 * M), 64 * M), (64 * M, 64 * M), ("  256M ", 256 * M), ("512MB", 512 * M),
])
def test_ram_sizes(text: object, expected: int) -> None:
    out = norm({"ram": text})
    assert out["ram"] == expected
    assert out.get("ram_high") in (None, UNLIMITED), "one value sets no separate soft limit"


def test_ram_barrier_limit() -> None:
    out = norm({"ram": "256M:512M"})
    assert out["ram"] == 512 * M and out["ram_high"] == 256 * M


def test_ram_barrier_equal_to_limit_is_fine() -> None:
    assert norm({"ram": "512M:512M"})["ram"] == 512 * M


@pytest.mark.parametrize("text", ["1Q", "-5M", "", "M", "lots", "1G:", ":1G", True])
def test_ram_refuses_nonsense(text: object) -> None:
    assert refused({"ram": text}).startswith("invalid ram")


@pytest.mark.parametrize("text", ["3M", "1K", "4194303", "0", "2M:3M"])
def test_ram_refuses_below_4m(text: str) -> None:
    assert "4M" in refused({"ram": text})


def test_ram_refuses_barrier_above_limit() -> None:
    assert "barrier must not exceed the limit" in refused({"ram": "1G:512M"})


@pytest.mark.parametrize("value", [1, "1", 3, HOST_CPUS, str(HOST_CPUS)])
def test_cpus_accepts_1_to_host(value: object) -> None:
    assert norm({"cpus": value})["cpus"] == int(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, HOST_CPUS + 1, "two", "1.5", 1.5, True])
def test_cpus_refuses(value: object) -> None:
    msg = refused({"cpus": value})
    assert msg.startswith("invalid cpus")


def test_cpus_above_host_names_the_host_count() -> None:
    assert str(HOST_CPUS) in refused({"cpus": HOST_CPUS + 1})


@pytest.mark.parametrize("value,expected", [(100, 100), ("100", 100), ("90:100", 100), ("100:100", 100), (1, 1)])
def test_numproc(value: object, expected: int) -> None:
    assert norm({"numproc": value})["numproc"] == expected


@pytest.mark.parametrize("value", [0, "0", -3, "ten", "1.5", "100:90", "x:100", True, 4194305, 10**30,
                                   "10000000000000000000:10000000000000000000"])
def test_numproc_refuses(value: object) -> None:
    assert refused({"numproc": value}).startswith("invalid numproc")


def test_numproc_takes_what_pids_max_takes() -> None:
    assert norm({"numproc": 4194304})["numproc"] == 4194304  # PID_MAX_LIMIT: pids.max takes it
    assert "from 1 to 4194304" in refused({"numproc": 10**30})


def test_numproc_barrier_above_limit() -> None:
    assert "barrier must not exceed the limit" in refused({"numproc": "100:90"})


def test_unknown_keys_are_refused_with_the_known_list() -> None:
    msg = refused({"ram": "1G", "zzz": 1, "memory": "1G"})
    assert msg.startswith("unknown limit(s) memory, zzz; known: ")
    for key in ("ram", "cpus", "numproc"):
        assert key in msg.split("known: ", 1)[1]


@pytest.mark.parametrize("raw", [None, [], "ram=1G", 5])
def test_limits_must_be_an_object(raw: object) -> None:
    assert "must be an object" in refused(raw)


def test_empty_and_null_values_set_nothing() -> None:
    assert norm({}) == {}
    assert norm({"ram": None, "cpus": None, "numproc": None}) == {}


def test_all_together() -> None:
    out = norm({"ram": "1G", "cpus": 2, "numproc": "90:100"})
    assert (out["ram"], out["cpus"], out["numproc"]) == (G, 2, 100)


# ---------------------------------------------------------------- cpus

@pytest.mark.parametrize("count,host,seed,expected", [
    (2, [0, 1, 2, 3], 0, "0,1"),
    (2, [0, 1, 2, 3], 1, "1,2"),
    (2, [0, 1, 2, 3], 3, "0,3"),   # wraps around, sorted
    (2, [0, 1, 2, 3], 5, "1,2"),   # seed beyond the host count
    (4, [0, 1, 2, 3], 2, "0,1,2,3"),
    (1, [0], 1234, "0"),
    (2, [2, 5, 7], 1, "5,7"),      # non-contiguous host cpus (a restricted cpuset)
])
def test_pick_cpus(count: int, host: list[int], seed: int, expected: str) -> None:
    assert limits.pick_cpus(count, host, seed) == expected


def test_pick_cpus_always_gives_count_distinct_host_cpus_and_spreads() -> None:
    host = list(range(8))
    firsts = set()
    for seed in range(100, 140):
        for count in range(1, 9):
            chosen = [int(c) for c in limits.pick_cpus(count, host, seed).split(",")]
            assert len(chosen) == len(set(chosen)) == count
            assert set(chosen) <= set(host) and chosen == sorted(chosen)
        firsts.add(limits.pick_cpus(1, host, seed))
    assert len(firsts) == 8, "single-cpu containers spread over every host cpu"


# ---------------------------------------------------------------- resources

def test_to_resources_from_normalised_limits() -> None:
    res = limits.to_resources({"ram": 512 * M, "cpus": 2, "numproc": 100}, [0, 1, 2, 3], 101)
    assert isinstance(res, Resources)
    assert res.memory_max == 512 * M
    assert res.memory_high is None
    assert res.cpuset == limits.pick_cpus(2, [0, 1, 2, 3], 101) == "1,2"
    assert res.pids_max == 100


def test_to_resources_soft_limit() -> None:
    res = limits.to_resources(norm({"ram": "256M:512M"}), [0], 1)
    assert (res.memory_high, res.memory_max) == (256 * M, 512 * M)


def test_to_resources_without_limits_changes_nothing() -> None:
    res = limits.to_resources({}, [0, 1], 7)
    assert (res.memory_max, res.memory_high, res.cpuset, res.pids_max) == (None, None, None, None)


def test_normalise_then_to_resources_round_trip() -> None:
    res = limits.to_resources(norm({"ram": "1G", "cpus": "1", "numproc": 50}), [0, 1, 2, 3], 2)
    assert res.memory_max == G and res.cpuset == "2" and res.pids_max == 50


@pytest.mark.parametrize("n,text", [
    (None, "-"), (0, "0"), (1000, "1000"), (1024, "1K"), (1536, "1536"), (512 * M, "512M"),
    (G, "1G"), (1536 * M, "1536M"), (3 * G, "3G"), (2 << 40, "2T"), (4 * M + 1, str(4 * M + 1)),
])
def test_human_size(n: int | None, text: str) -> None:
    assert limits.human_size(n) == text


def test_human_size_round_trips_through_normalise() -> None:
    for n in (4 * M, 512 * M, 1536 * M, 3 * G):
        assert norm({"ram": limits.human_size(n)})["ram"] == n


@pytest.mark.parametrize("key,text", [("ram", "99999999999T"), ("ram", "1G:99999999999T"),
                                      ("swap", "8388608T"), ("diskspace", "99999999999T"),
                                      ("iolimit", str(1 << 64))])
def test_sizes_no_host_can_have_are_refused_naming_the_maximum(key: str, text: str) -> None:
    raw = {"ram": "1G", key: text} if key == "swap" else {key: text}
    msg = refused(raw)
    assert msg.startswith(f"invalid {key}") and "at most 8388607T" in msg, msg


def test_the_largest_size_is_accepted() -> None:
    assert norm({"ram": "8388607T"})["ram"] == 8388607 << 40 < 1 << 63


@pytest.mark.parametrize("key,value,bound", [("numproc", "99999999999", "4194304"),
                                             ("numproc", "1:99999999999", "4194304"),
                                             ("iopslimit", str(10 ** 30), str((1 << 63) - 1)),
                                             ("cpulimit", str(10 ** 30), str((1 << 63) - 1))])
def test_counts_beyond_what_the_kernel_takes_are_refused(key: str, value: str, bound: str) -> None:
    msg = refused({key: value})
    assert msg.startswith(f"invalid {key}") and bound in msg, msg


def test_numpty() -> None:
    assert norm({"numpty": "64"}) == {"numpty": 64}
    assert "from 1 to 1048576" in refused({"numpty": 0})
    assert "from 1 to 1048576" in refused({"numpty": 1 << 21})
    assert "whole number" in refused({"numpty": "unlimited"})
