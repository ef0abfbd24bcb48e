"""Ownership locks: a second ctd on a resource another live ctd owns is refused, by name."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from ctd.errors import Conflict
from ctd.ownership import Ownership, daemon_claims


def claims(state: str, *, cgroup: str = "cg", table: str = "t", prefix: str = "aa", ids: tuple[int, int] = (1, 2),
           socket: str = "s.sock") -> list:
    return daemon_claims(Path("/x") / state, Path("/x") / socket, {"memory": f"/sys/fs/cgroup/memory/{cgroup}"},
                         cgroup, table, prefix, ids[0] * 1_000_000, ids[1] * 1_000_000)


def test_second_owner_of_each_resource_is_refused_with_the_setting(tmp_path: Path) -> None:
    first = Ownership(Path("/x/a"), tmp_path)
    first.claim(claims("a"))
    cases = {"cgroup_name 'cg'": dict(table="u", prefix="bb", ids=(3, 4), socket="2"),
             "nft_table 't'": dict(cgroup="other", prefix="bb", ids=(3, 4), socket="2"),
             "nic_prefix 'aa'": dict(cgroup="other", table="u", ids=(3, 4), socket="2"),
             "host ids": dict(cgroup="other", table="u", prefix="bb", ids=(1, 5), socket="2"),
             "socket": dict(cgroup="other", table="u", prefix="bb", ids=(3, 4))}
    for expected, differing in cases.items():
        second = Ownership(Path("/x/b"), tmp_path)
        with pytest.raises(Conflict, match=expected) as err:
            second.claim(claims("b", **differing))
        assert "state dir /x/a" in err.value.message and "ctd.toml" in err.value.message or expected == "socket"
        # refused as a whole: what it took before the conflict is free again
        third = Ownership(Path("/x/c"), tmp_path)
        third.claim(claims("c", cgroup="c3", table="v", prefix="cc", ids=(7, 8), socket="3"))
        third.release()
    second = Ownership(Path("/x/b"), tmp_path)
    second.claim(claims("b", cgroup="other", table="u", prefix="bb", ids=(2, 4), socket="2"))  # touching, no overlap
    second.release()
    first.release()
    Ownership(Path("/x/b"), tmp_path).claim(claims("b"))  # free once the first let go


def _hold(lock_dir: str, ready, done) -> None:  # type: ignore[no-untyped-def]
    Ownership(Path("/x/dead"), Path(lock_dir)).claim(claims("dead"))
    ready.set()
    done.wait(10)


def test_a_dead_owner_blocks_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), ready, done))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(Conflict, match=f"pid {proc.pid}"):
            Ownership(Path("/x/b"), tmp_path).claim(claims("b", ids=(1, 3)))
    finally:
        done.set()
        proc.join(10)
    Ownership(Path("/x/b"), tmp_path).claim(claims("b", ids=(1, 3)))


def test_lock_files_go_with_their_owner(tmp_path: Path) -> None:
    first = Ownership(Path("/x/a"), tmp_path)
    first.claim(claims("a"))
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 6
    first.release()
    assert [p.name for p in tmp_path.iterdir()] == [".global"]
    (tmp_path / "nic-qq").write_text("{}")  # left by a ctd that was SIGKILLed: nobody holds it
    Ownership(Path("/x/b"), tmp_path).claim(claims("b", prefix="bb"))
    assert not (tmp_path / "nic-qq").exists()
