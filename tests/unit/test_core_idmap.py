"""Host id range allocation for containers, and /etc/subuid-style parsing."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from ctd import idmap
from ctd.errors import CtdError, OperationFailed

SIZE = 65536
BASE = 1_000_000


def overlaps(a: int, an: int, b: int, bn: int) -> bool:
    return a < b + bn and b < a + an


def test_first_allocation_is_the_base() -> None:
    assert idmap.allocate(BASE, SIZE, set(), []) == BASE


def test_skips_taken_ranges_lowest_first() -> None:
    taken = {BASE, BASE + 2 * SIZE}
    assert idmap.allocate(BASE, SIZE, taken, []) == BASE + SIZE
    taken.add(BASE + SIZE)
    assert idmap.allocate(BASE, SIZE, taken, []) == BASE + 3 * SIZE


def test_skips_a_subuid_reservation_that_straddles_two_slots() -> None:
    reserved = [(BASE + SIZE // 2, SIZE)]  # covers half of slot 0 and half of slot 1
    start = idmap.allocate(BASE, SIZE, set(), reserved)
    assert start == BASE + 2 * SIZE


def test_a_one_id_reservation_at_the_edge_is_respected() -> None:
    assert idmap.allocate(BASE, SIZE, set(), [(BASE + SIZE - 1, 1)]) == BASE + SIZE
    assert idmap.allocate(BASE, SIZE, set(), [(BASE + SIZE, 1)]) == BASE  # just past the end: no clash


def test_many_allocations_never_overlap_and_stay_aligned() -> None:
    rng = random.Random(1234)
    reserved = [(rng.randrange(BASE, BASE + 200 * SIZE), rng.randrange(1, 3 * SIZE)) for _ in range(15)]
    taken: set[int] = set()
    for _ in range(60):
        start = idmap.allocate(BASE, SIZE, taken, reserved)
        assert start >= BASE
        assert (start - BASE) % SIZE == 0, "ranges are aligned to the size, counted from the base"
        assert start not in taken
        assert not any(overlaps(start, SIZE, t, SIZE) for t in taken)
        assert not any(overlaps(start, SIZE, r, n) for r, n in reserved)
        assert start + SIZE - 1 <= idmap.MAX_ID
        taken.add(start)


def _naive(base: int, size: int, taken: set[int], reserved: list[tuple[int, int]], limit: int) -> int | None:
    start = base
    while start + size <= min(limit, idmap.MAX_ID + 1):
        if not any(overlaps(start, size, t, size) for t in taken) and \
                not any(r < start + size and start < r + n for r, n in reserved):
            return start
        start += size
    return None


def test_the_sweep_picks_what_trying_every_slot_picks() -> None:
    rng = random.Random(99)
    for _ in range(300):
        size = rng.choice([4, 16, SIZE])
        base = rng.randrange(0, 50 * size)
        taken = {base + rng.randrange(0, 30) * size + rng.choice([0, 0, 0, rng.randrange(size)])
                 for _ in range(rng.randrange(0, 25))}
        reserved = [(rng.randrange(0, 60 * size), rng.randrange(0, 3 * size)) for _ in range(rng.randrange(0, 5))]
        limit = base + rng.randrange(1, 40) * size
        want = _naive(base, size, taken, reserved, limit)
        if want is None:
            with pytest.raises(OperationFailed):
                idmap.allocate(base, size, taken, reserved, limit)
        else:
            assert idmap.allocate(base, size, taken, reserved, limit) == want, (base, size, taken, reserved)


def test_never_hands_out_the_invalid_uid() -> None:
    # (uid_t)-1 = 4294967295 must stay outside every range
    base = idmap.MAX_ID + 1 - 2 * SIZE
    first = idmap.allocate(base, SIZE, set(), [])
    second = idmap.allocate(base, SIZE, {first}, [])
    assert second + SIZE - 1 == idmap.MAX_ID < 2**32 - 1


def test_full_raises_operation_failed_with_advice() -> None:
    base = idmap.MAX_ID + 1 - 2 * SIZE
    with pytest.raises(OperationFailed) as e:
        idmap.allocate(base, SIZE, {base, base + SIZE}, [])
    assert isinstance(e.value, CtdError) and e.value.code == "failed"
    assert "destroy" in e.value.message


def test_full_because_of_reservations() -> None:
    base = idmap.MAX_ID + 1 - 2 * SIZE
    with pytest.raises(OperationFailed):
        idmap.allocate(base, SIZE, set(), [(base, 2 * SIZE)])


def test_subid_ranges_parses_good_lines_and_skips_bad(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text(
        "alice:100000:65536\n"
        "  1001:165536:65536  \n"    # numeric owner, surrounding blanks
        "# a comment\n"
        "\n"
        "bob:abc:65536\n"            # not a number
        "carol:200000\n"             # missing count
        "dave:-5:10\n"               # negative
        "eve:1:2:3\n"                # too many fields
        "frank:300000:1000\n")
    subgid = tmp_path / "subgid"
    subgid.write_text("alice:400000:65536\n")
    assert idmap.subid_ranges(subuid, subgid) == [
        (100000, 65536), (165536, 65536), (300000, 1000), (400000, 65536)]


def test_subid_ranges_skips_missing_and_unreadable_files(tmp_path: Path) -> None:
    present = tmp_path / "subuid"
    present.write_text("a:10:20\n")
    directory = tmp_path / "subgid"
    directory.mkdir()  # reading a directory fails with an OSError too
    assert idmap.subid_ranges(tmp_path / "missing", directory, present) == [(10, 20)]
    assert idmap.subid_ranges() == []


def test_subid_ranges_feed_allocate(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text(f"user:{BASE}:{SIZE}\n")
    assert idmap.allocate(BASE, SIZE, set(), idmap.subid_ranges(subuid)) == BASE + SIZE


def test_stays_below_the_area_end() -> None:
    assert idmap.allocate(BASE, SIZE, {BASE}, [], BASE + 2 * SIZE) == BASE + SIZE
    with pytest.raises(OperationFailed, match="idmap_end"):
        idmap.allocate(BASE, SIZE, {BASE, BASE + SIZE}, [], BASE + 2 * SIZE)
