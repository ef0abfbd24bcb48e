"""Scheduled and chained backups on a real daemon and its btrfs pool (issue #16).

A daemon of the test's own reads the scheduler's "now" from a file the test writes
(backup_clock_file, tests only) and looks for due schedules every 0.2 s, so a schedule is made
due by moving that clock, not by waiting for the wall clock. The backups are real `btrfs send`
(-p) streams in the daemon's backup_dir; restores go through the real `btrfs receive`.

What a user checks: a due schedule makes one backup (and after downtime that missed several runs,
one); full then two increments restore to exactly the last state (deletions and renames too);
retention never removes a parent a kept increment needs; a chain tampered with (a link from
another chain, a stream cloning from outside its chain) is refused with nothing left behind; a
full backup target fails cleanly, leaves no partial file and keeps the chain going.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctctl.client import ApiError
from ctd.instance.backups import SUFFIX
from tests.conftest import Daemon, _start_daemon, _teardown

zstandard = pytest.importorskip("zstandard", reason="pip install zstandard (setup.sh does)")


@pytest.fixture
def sched_ctd(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    clock = tmp_path / "clock"
    clock.write_text(str(time.time()))
    d = _start_daemon(tmp_path, "bk", extra=f'backup_clock_file = "{clock}"\nbackup_tick = 0.2\n'
                                            f'backup_dir = "{tmp_path / "backups"}"\n')
    if d.client.get("/1.0")["storage"]["driver"] != "btrfs":
        _teardown(d)
        pytest.fail("the daemon's pool is not btrfs: ./setup.sh installs btrfs-progs and btrfsutil")
    yield d, clock
    try:
        if d.proc and d.proc.poll() is not None:
            d.start()
    finally:
        _teardown(d)


def backups(d: Daemon, name: str) -> list[dict]:
    return d.client.get(f"/1.0/instances/{name}/backups")["backups"]


def wait_backups(d: Daemon, name: str, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = backups(d, name)
        running = [op for op in d.client.get("/1.0/operations")["operations"]
                   if op["kind"] == "backup" and op["status"] == "running"]
        if len(found) >= count and not running:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{name}: {len(backups(d, name))} backups after {timeout} s, not {count}")


def data(d: Daemon, name: str) -> Path:
    return d.rootfs(name) / "data"


def tree(root: Path) -> dict[str, str]:
    """Every name below root with its kind and content (what a restore must give back)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def local(day: int, hour: int, minute: int, second: int = 0) -> float:
    return dt.datetime(2031, 3, day, hour, minute, second).timestamp()


@pytest.mark.parametrize("body, words", [
    ({"backup_schedule": "daily@25:00"}, ["backup_schedule", "hour", "daily@HH:MM"]),
    ({"backup_schedule": "1 2 3"}, ["backup_schedule", "3 fields", "M H DOM MON DOW"]),
    ({"backup_schedule": "0 0 31 2 *"}, ["backup_schedule", "never due"]),
    ({"backup_schedule": "weekly@funday 03:00"}, ["backup_schedule", "day of the week"]),
    ({"backup_keep": 0}, ["backup_keep", "1 to 1000"]),
])
def test_bad_schedules_are_refused_naming_the_field(ctd: Daemon, make_container, body: dict, words: list[str]) -> None:
    name = ctd.unique("bks")
    with pytest.raises(ApiError) as err:
        ctd.client.run("POST", "/1.0/instances", {"name": name, "template": "busybox", **body})
    assert err.value.status == 400 and all(w in str(err.value) for w in words), err.value
    assert name not in [i["name"] for i in ctd.client.get("/1.0/instances")["instances"]]
    existing = make_container(start=False)
    ctd.ok("set", existing, "--backup-schedule", "daily@02:00", "--backup-keep", "3")
    args = ["set", existing] + [a for k, v in body.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    r = ctd.ctl(*args)
    assert r.code != 0 and all(w in r.err for w in words), r.err
    shown = ctd.instance(existing)
    assert (shown["backup_schedule"], shown["backup_keep"]) == ("daily@02:00", 3)


def test_a_due_schedule_runs_once_and_downtime_gives_one_run_not_many(sched_ctd) -> None:
    d, clock = sched_ctd
    clock.write_text(str(local(3, 1, 59, 30)))
    d.ok("create", "web", "--template", "busybox", "--backup-schedule", "daily@02:00", "--backup-keep", "5")
    shown = d.instance("web")
    assert shown["backup_next"] == dt.datetime.fromtimestamp(local(3, 2, 0), dt.timezone.utc).isoformat()
    assert "daily@02:00, keep 5" in d.ok("status", "web")
    time.sleep(1)   # five ticks before 02:00: nothing
    assert backups(d, "web") == []
    clock.write_text(str(local(3, 2, 0, 10)))
    first = wait_backups(d, "web", 1)
    time.sleep(1)   # five more ticks at the same time: still one
    assert len(backups(d, "web")) == 1 and first[0]["kind"] == "full" and first[0]["scheduled"]
    assert Path(first[0]["file"]).is_file()

    d.stop()   # three days down: three runs missed
    clock.write_text(str(local(6, 5, 0)))
    d.start()
    found = wait_backups(d, "web", 2)
    time.sleep(1)
    assert len(backups(d, "web")) == 2
    assert found[1]["kind"] == "incremental" and found[1]["parent"] == found[0]["id"]
    assert d.instance("web")["backup_next"] == dt.datetime.fromtimestamp(local(7, 2, 0), dt.timezone.utc).isoformat()
    d.ok("set", "web", "--backup-schedule", "none")
    assert d.instance("web")["backup_schedule"] is None


def make_chain(d: Daemon, name: str) -> tuple[list[dict], dict[str, str]]:
    """full, then two increments with writes, deletions and renames; returns the list and the
    last state of /data."""
    d.ok("create", name, "--template", "busybox", "--backup-keep", "5")
    root = data(d, name)
    (root / "dir").mkdir(parents=True)
    (root / "a").write_bytes(os.urandom(300_000))
    (root / "b").write_text("bee\n")
    (root / "dir/c").write_text("sea\n")
    (root / "link").symlink_to("b")
    assert "(full, btrfs-send" in d.ok("backup", name)
    (root / "a").unlink()
    (root / "b").rename(root / "b2")
    (root / "new").write_bytes(os.urandom(1_000_000))
    assert "(incremental, btrfs-send" in d.ok("backup", name)
    (root / "dir/c").unlink()
    (root / "dir").rename(root / "dir2")
    with (root / "new").open("r+b") as fh:
        fh.seek(500_000)
        fh.write(b"changed")
    (root / "b2").write_text("bumble\n")
    assert "(incremental, btrfs-send" in d.ok("backup", name)
    return backups(d, name), tree(root)


def test_full_then_two_increments_restore_exactly_the_last_state(sched_ctd) -> None:
    d, _ = sched_ctd
    chain, last = make_chain(d, "src")
    assert [b["kind"] for b in chain] == ["full", "incremental", "incremental"]
    assert chain[1]["parent"] == chain[0]["id"] and chain[2]["parent"] == chain[1]["id"]
    assert chain[2]["size"] < chain[0]["size"] // 2 + 600_000   # the increment carries the change only
    listing = d.ok("backup-list", "src")
    assert listing.count("incremental") == 2 and "#1" in listing and "#2" in listing
    d.ok("restore", chain[2]["file"], "--name", "copy")
    assert tree(data(d, "copy")) == last
    assert sorted(last) == ["b2", "dir2", "link", "new"]


def test_retention_keeps_the_parents_a_kept_increment_needs(sched_ctd) -> None:
    d, _ = sched_ctd
    d.ok("create", "ret", "--template", "busybox", "--backup-keep", "2")
    made = []
    for n in range(4):
        (d.rootfs("ret") / f"f{n}").write_text(str(n))
        d.ok("backup", "ret")
        made.append(backups(d, "ret")[-1])
        if n == 2:   # F1 I1 F2: I1 is one of the two newest and needs F1
            assert [b["id"] for b in backups(d, "ret")] == [m["id"] for m in made]
    assert [m["kind"] for m in made] == ["full", "incremental", "full", "incremental"]
    kept = backups(d, "ret")
    assert [b["id"] for b in kept] == [made[2]["id"], made[3]["id"]]
    assert json.loads(d.ok("backup-list", "ret", "--format", "json")) == kept
    assert not Path(made[0]["file"]).exists() and not Path(made[1]["file"]).exists()
    d.ok("restore", made[3]["file"], "--name", "ret-copy")
    assert (d.rootfs("ret-copy") / "f3").read_text() == "3"


def _members(path: Path) -> tuple[dict, bytes]:
    with tarfile.open(path) as tf:
        header = json.load(tf.extractfile("ctd-backup.json"))   # type: ignore[arg-type]
        member = tf.extractfile(header["member"]).read()   # type: ignore[union-attr]
    return header, member


def _write_backup(path: Path, header: dict, member_name: str, member: bytes) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, body in (("ctd-backup.json", json.dumps(header).encode()), (member_name, member)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))


def _with_foreign_clone(stream_zst: bytes, foreign_uuid: bytes) -> bytes:
    """The stream with a clone command from foreign_uuid's data after its first command."""
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(stream_zst)
    first_len = struct.unpack_from("<I", raw, 17)[0]
    attrs = [(15, b"data/b2"), (18, struct.pack("<Q", 0)), (24, struct.pack("<Q", 4096)),
             (20, foreign_uuid), (21, struct.pack("<Q", 7)), (22, b"data/new"), (23, struct.pack("<Q", 0))]
    body = b"".join(struct.pack("<HH", k, len(v)) + v for k, v in attrs)
    clone = struct.pack("<IHI", len(body), 16, 0) + body
    return zstandard.ZstdCompressor().compress(raw[:17 + 10 + first_len] + clone + raw[17 + 10 + first_len:])


def _leftovers(d: Daemon) -> list[str]:
    storage = d.state_dir / "storage"
    return sorted(p.name for p in storage.iterdir() if p.name.startswith(".")) + sorted(
        p.name for p in (storage / "instances").iterdir())


def test_a_tampered_chain_is_refused_with_nothing_left(sched_ctd) -> None:
    d, _ = sched_ctd
    chain, _ = make_chain(d, "one")
    other, _ = make_chain(d, "two")
    before = _leftovers(d)
    link = Path(chain[1]["file"])
    original = link.read_bytes()
    header1, _ = _members(link)
    _, foreign_member = _members(Path(other[1]["file"]))
    cases = []
    # the middle link replaced by a file of the same id carrying another chain's increment
    cases.append(("names a parent subvolume that is not the previous backup",
                  lambda: _write_backup(link, header1, header1["member"], foreign_member)))
    # the middle link replaced by another chain's file (another id)
    cases.append(("is not its parent backup", lambda: link.write_bytes(Path(other[1]["file"]).read_bytes())))
    # the middle link's stream made to clone data of another subvolume
    foreign_uuid = bytes.fromhex(uuid_of_full(other[0]["file"]))
    cases.append(("clones data from another subvolume",
                  lambda: _write_backup(link, header1, header1["member"],
                                        _with_foreign_clone(_members(link)[1], foreign_uuid))))
    for words, tamper in cases:
        link.write_bytes(original)
        tamper()
        r = d.ctl("restore", chain[2]["file"], "--name", "evil")
        assert r.code != 0 and words in r.err, (words, r.err)
        assert _leftovers(d) == before
    link.write_bytes(original)
    d.ok("restore", chain[2]["file"], "--name", "fine")


def uuid_of_full(file: str) -> str:
    """The subvolume UUID a full backup's stream names (its first command's UUID attribute)."""
    _, member = _members(Path(file))
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(member)
    first_len = struct.unpack_from("<I", raw, 17)[0]
    body, off = raw[27:27 + first_len], 0
    while off < len(body):
        kind, size = struct.unpack_from("<HH", body, off)
        if kind == 1:
            return body[off + 4:off + 4 + size].hex()
        off += 4 + size
    raise AssertionError("no UUID")


def test_a_full_target_fails_cleanly_and_keeps_the_chain(sched_ctd, tmp_path: Path) -> None:
    d, _ = sched_ctd
    d.ok("create", "big", "--template", "busybox")
    target = tmp_path / "backups" / "big"
    target.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "ctd-test-full", str(target)], check=True)
    try:
        first = d.ok("backup", "big")
        assert "(full" in first
        filler = target / "filler"
        subprocess.run(["fallocate", "-l", str(os.statvfs(target).f_bavail * os.statvfs(target).f_frsize - 65536),
                        str(filler)], check=True)
        (d.rootfs("big") / "blob").write_bytes(os.urandom(4 << 20))
        r = d.ctl("backup", "big")
        assert r.code != 0 and "is full" in r.err and str(target) in r.err, r.err
        assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == sorted(
            [Path(backups(d, "big")[0]["file"]).name, "filler"])
        assert not [p for p in target.iterdir() if ".part-" in p.name]
        parent = backups(d, "big")[0]
        assert len(backups(d, "big")) == 1
        assert (d.state_dir / "storage/instances/big" / f"backup-parent-{parent['id']}").is_dir()
        filler.unlink()
        assert "(incremental" in d.ok("backup", "big")
        assert backups(d, "big")[-1]["parent"] == parent["id"]
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_a_restart_removes_what_a_killed_backup_left(sched_ctd) -> None:
    """ctd killed during a backup leaves a .part file and the new snapshot: the next start
    removes both and keeps the last backup's snapshot, so the chain goes on."""
    d, _ = sched_ctd
    d.ok("create", "crash", "--template", "busybox")
    d.ok("backup", "crash")
    last = backups(d, "crash")[0]
    inst = d.state_dir / "storage/instances/crash"
    stale = inst / f"backup-parent-{'f' * 32}"
    subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(d.rootfs("crash")), str(stale)],
                   check=True, capture_output=True)
    part = Path(last["file"]).parent / f".crash-x{SUFFIX}.part-abc123"
    part.write_bytes(b"half a backup")
    d.kill9()
    d.start()
    assert not stale.exists() and not part.exists()
    assert (inst / f"backup-parent-{last['id']}").is_dir()
    assert "(incremental" in d.ok("backup", "crash")
    # a rename takes the kept snapshot along; its backups go to a directory of the new name,
    # where a new chain starts
    d.ok("rename", "crash", "crash2")
    moved = d.state_dir / "storage/instances/crash2"
    assert [p.name for p in moved.glob("backup-parent-*")] == [f"backup-parent-{backups(d, 'crash2')[-1]['id']}"]
    assert "(full" in d.ok("backup", "crash2")
    assert Path(backups(d, "crash2")[-1]["file"]).parent.name == "crash2"
    d.ok("destroy", "crash2")
    assert not moved.exists() and not inst.exists()   # the kept snapshot goes with the instance
