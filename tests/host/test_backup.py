"""ctd/storage/backup/ (+ archive/ with owners) on a real btrfs and on the dir driver:
backup -> delete -> restore gives back the same files, owners, modes, xattrs and links; backups
from snapshots; tar backups across drivers; corrupt, truncated and hostile backups are refused
and leave no instance, staging directory or subvolume behind.

The btrfs is a loop file this module makes under its tmp dir (as tests/host/test_storage_btrfs.py
does); it is unmounted and detached in a finally block, even on failure. Nothing here touches the
host's own filesystems, mounts or loop devices."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctd.errors import Conflict, InvalidRequest, NotFound, NotSupported
from ctd.storage.archive import export_rootfs, import_rootfs
from ctd.storage.base import StorageDriver
from ctd.storage.dir import DirStorage

if os.geteuid() != 0:
    print("tests/host/test_backup.py: skipped, needs root for loop devices, mounts and chown",
          file=sys.stderr)
    pytest.skip("needs root for loop devices, mounts and chown", allow_module_level=True)

btrfsutil = pytest.importorskip("btrfsutil", reason="pip install btrfsutil==6.10 (setup.sh does)")
pytest.importorskip("zstandard", reason="pip install zstandard (setup.sh does)")
from ctd.storage.backup import (create_backup, discard_partial, read_backup_header,  # noqa: E402
                                restore_backup)
from ctd.storage.btrfs import BtrfsStorage  # noqa: E402
from tests.helpers.btrfs import _run, loop_btrfs, send_command  # noqa: E402,F401

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture(scope="module")
def btrfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with loop_btrfs(tmp_path_factory.mktemp("backup-btrfs")) as mnt:
        yield mnt


_counter = iter(range(1_000_000))


@pytest.fixture
def bt(btrfs_mount: Path) -> Iterator[BtrfsStorage]:
    root = btrfs_mount / f"storage{next(_counter)}"
    driver = BtrfsStorage(root, enable_quota=True)
    driver.prepare()
    yield driver
    for name in driver.instance_names():
        driver.delete_instance(name)
    for tmpl in (root / "templates").iterdir():
        driver._remove_root(tmpl)
    driver._remove_root(root)


@pytest.fixture
def ds(tmp_path: Path) -> DirStorage:
    d = DirStorage(tmp_path / "dirstore")
    d.prepare()
    return d


@pytest.fixture(params=["btrfs", "dir"])
def driver(request: pytest.FixtureRequest) -> StorageDriver:
    return request.getfixturevalue("bt" if request.param == "btrfs" else "ds")


def make_instance(driver: StorageDriver, name: str = "web", big: int = 0) -> Path:
    """A template the way TemplateManager builds one, an instance of it, then a guest's life
    in its root: files of uid 1000, a root-owned setuid binary, capabilities, ACL-ish xattrs."""
    staging = driver.new_template_dir("base")
    r = staging / "rootfs"
    for d in ("etc", "bin", "usr/bin", "home/user", "tmp", "var/log", "dev"):
        (r / d).mkdir(parents=True, exist_ok=True)
    (r / "etc/hostname").write_text("template\n")
    (r / "bin/busybox").write_bytes(b"\x7fELF" + os.urandom(20000))
    os.symlink("busybox", r / "bin/sh")
    driver.commit_template("base", staging)
    root = driver.create_instance(name, "base")

    (root / "etc/hostname").write_text(f"{name}\n")
    (root / "usr/bin/sudo").write_bytes(b"\x7fELF" + os.urandom(30000))
    os.chown(root / "usr/bin/sudo", 0, 0)
    os.chmod(root / "usr/bin/sudo", 0o4755)
    os.link(root / "usr/bin/sudo", root / "usr/bin/sudoedit")
    (root / "usr/bin/ping").write_bytes(b"\x7fELF" + os.urandom(1000))
    if shutil.which("setcap"):
        _run("setcap", "cap_net_raw+ep", str(root / "usr/bin/ping"))
    os.chown(root / "home/user", 1000, 1000)
    os.chmod(root / "home/user", 0o700)
    (root / "home/user/notes").write_text("mine\n")
    os.chown(root / "home/user/notes", 1000, 1000)
    os.chmod(root / "home/user/notes", 0o600)
    os.setxattr(root / "home/user/notes", "user.tag", b"\x01\x02value")
    os.symlink("/etc/hostname", root / "home/user/abs-link")
    os.lchown(root / "home/user/abs-link", 1000, 1000)
    os.symlink("../../etc", root / "home/user/rel-link")
    os.mkfifo(root / "var/log/pipe", 0o620)
    os.chown(root / "var/log/pipe", 0, 4)
    os.chmod(root / "tmp", 0o1777)
    (root / "var/log/shared").mkdir()
    os.chown(root / "var/log/shared", 0, 50)
    os.chmod(root / "var/log/shared", 0o2775)
    with (root / "var/log/lastlog").open("wb") as fh:  # sparse, like the real one
        fh.seek(64 * MiB)
        fh.write(b"end")
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    if big:
        with (root / "big").open("wb") as fh:
            for _ in range(big // MiB):
                fh.write(os.urandom(MiB))
    return root


def tree(root: Path, *, skip_dev: bool = False) -> dict[str, tuple]:
    """Everything a restore must give back, per path: type, mode, owner, content digest or
    link target, xattrs, hard-link group, mtime (seconds)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        rel = str(path.relative_to(root))
        if skip_dev and (rel == "dev" or rel.startswith("dev/")):
            continue
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        body: object = None
        xattrs: dict[str, bytes] = {}
        if stat.S_ISREG(st.st_mode):
            body = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            body = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode):
            body = st.st_rdev
        if not stat.S_ISLNK(st.st_mode):
            xattrs = {n: os.getxattr(path, n) for n in sorted(os.listxattr(path))}
        link = None
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            link = inodes.setdefault(st.st_ino, rel)
        mtime = int(st.st_mtime) if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode) else None
        out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, body, xattrs, link, mtime)
    return out


def leftovers(driver: StorageDriver) -> list[str]:
    found = [p.name for p in driver.root.iterdir() if p.name.startswith((".backup-", ".restore-"))]
    return found


def subvolumes(driver: StorageDriver) -> list[str]:
    return sorted(p for p, _ in driver.subvolumes()) if isinstance(driver, BtrfsStorage) else []


# -- the round trip -----------------------------------------------------------------------------

@pytest.mark.parametrize("how", [("btrfs", None), ("btrfs", "tar"), ("dir", None)])
def test_backup_destroy_restore_gives_everything_back(how: tuple[str, str | None], tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    kind, forced = how
    driver: StorageDriver = request.getfixturevalue("bt" if kind == "btrfs" else "ds")
    root = make_instance(driver)
    expected_driver = forced or ("btrfs-send" if kind == "btrfs" else "tar")
    skip_dev = True  # restores drop device nodes (ctd makes /dev); compared without dev/
    before = tree(root, skip_dev=skip_dev)
    assert before["usr/bin/sudo"][1] == 0o4755 and before["home/user/notes"][2:4] == (1000, 1000)

    out = tmp_path / "web.backup"
    calls: list[tuple[int, int]] = []
    meta = {"template": "base", "hostname": "web", "limits": {"ram": "256M"}}
    header = create_backup(driver, "web", out, meta=meta, driver=forced,
                           progress=lambda d, t: calls.append((d, t)))
    assert header["driver"] == expected_driver and header["size"] == out.stat().st_size
    assert calls[-1][0] == calls[-1][1]
    assert not leftovers(driver) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert read_backup_header(out)["meta"] == meta

    driver.delete_instance("web")
    assert not driver.instance_path("web").exists()
    seen: list[tuple[int, int]] = []
    assert restore_backup(driver, out, "web", progress=lambda d, t: seen.append((d, t))) == meta
    assert seen[-1] == (out.stat().st_size, out.stat().st_size)
    restored = driver.rootfs("web")
    assert tree(restored, skip_dev=skip_dev) == before
    assert os.listdir(restored / "dev") == []  # dev/null was dropped, whatever the driver
    assert os.lstat(restored / "var/log/lastlog").st_blocks * 512 < 4 * MiB  # still sparse
    assert sorted(p.name for p in driver.instance_path("web").iterdir()) == ["rootfs"]
    assert stat.S_IMODE(driver.instance_path("web").stat().st_mode) == 0o700
    assert not leftovers(driver)
    if isinstance(driver, BtrfsStorage):
        assert btrfsutil.is_subvolume(restored) and not btrfsutil.get_subvolume_read_only(restored)
        assert subvolumes(driver) == ["instances/web/rootfs", "templates/base/rootfs"]
        (restored / "writable").write_text("yes")
        assert driver.snapshot_instance("web", "after")  # the restored root works as any other
    # a restore never replaces an existing instance
    with pytest.raises(Conflict):
        restore_backup(driver, out, "web")
    restore_backup(driver, out, "web-copy")
    assert tree(driver.rootfs("web-copy"), skip_dev=skip_dev) == before


def test_backup_from_a_snapshot(driver: StorageDriver, tmp_path: Path) -> None:
    root = make_instance(driver)
    driver.snapshot_instance("web", "s1")
    at_snapshot = tree(root, skip_dev=True)
    (root / "etc/hostname").write_text("changed after the snapshot\n")
    (root / "new-file").write_text("x")
    subvols = subvolumes(driver)

    out = tmp_path / "s1.backup"
    header = create_backup(driver, "web", out, snapshot="s1")
    assert header["snapshot"] == "s1"
    assert subvolumes(driver) == subvols and not leftovers(driver)  # no temporary snapshot
    restore_backup(driver, out, "old")
    assert tree(driver.rootfs("old"), skip_dev=True) == at_snapshot  # device nodes dropped
    assert os.listdir(driver.rootfs("old") / "dev") == []
    assert (driver.rootfs("old") / "etc/hostname").read_text() == "web\n"
    assert not (driver.rootfs("old") / "new-file").exists()
    with pytest.raises(NotFound):
        create_backup(driver, "web", tmp_path / "x", snapshot="nope")
    with pytest.raises(NotFound):
        create_backup(driver, "ghost", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_running_backup_takes_a_temporary_snapshot(bt: BtrfsStorage, tmp_path: Path) -> None:
    make_instance(bt)
    subvols = subvolumes(bt)
    header = create_backup(bt, "web", tmp_path / "b")
    assert header["driver"] == "btrfs-send"
    assert subvolumes(bt) == subvols and not leftovers(bt)


def test_tar_backups_cross_drivers(bt: BtrfsStorage, ds: DirStorage, tmp_path: Path) -> None:
    # dir -> btrfs: the restored root becomes a subvolume
    root = make_instance(ds, "fromdir")
    before = tree(root, skip_dev=True)
    create_backup(ds, "fromdir", tmp_path / "d.backup")
    restore_backup(bt, tmp_path / "d.backup", "fromdir")
    assert btrfsutil.is_subvolume(bt.rootfs("fromdir"))
    assert tree(bt.rootfs("fromdir"), skip_dev=True) == before
    # btrfs -> dir with the tar driver
    root = make_instance(bt, "frombtrfs")
    before = tree(root, skip_dev=True)
    create_backup(bt, "frombtrfs", tmp_path / "b.backup", driver="tar")
    restore_backup(ds, tmp_path / "b.backup", "frombtrfs")
    assert tree(ds.rootfs("frombtrfs"), skip_dev=True) == before
    # btrfs-send onto dir: refused, clearly, and nothing is left
    create_backup(bt, "frombtrfs", tmp_path / "s.backup")
    with pytest.raises(NotSupported, match="btrfs-send backup.*tar driver"):
        restore_backup(ds, tmp_path / "s.backup", "other")
    assert not ds.instance_path("other").exists() and not leftovers(ds)
    with pytest.raises(NotSupported):
        create_backup(ds, "frombtrfs", tmp_path / "x", driver="btrfs-send")


# -- bad input ----------------------------------------------------------------------------------

def _damage(data: bytes, how: str) -> bytes:
    member_start = 1024 + 512 * ((json_len(data) + 511) // 512)  # after the JSON member
    if how == "truncate-half":
        return data[:len(data) // 2]
    if how == "truncate-tail":
        return data[:len(data) - 10240 - 1000]
    if how == "truncate-after-header":
        return data[:member_start]
    if how == "flip":
        buf = bytearray(data)
        for i in range((member_start + len(data)) // 2, (member_start + len(data)) // 2 + 64):
            buf[i] ^= 0x5A
        return bytes(buf)
    if how == "flip-start":
        buf = bytearray(data)
        for i in range(member_start + 40, member_start + 60):
            buf[i] ^= 0x5A
        return bytes(buf)
    raise AssertionError(how)


def json_len(data: bytes) -> int:
    return tarfile.TarInfo.frombuf(data[:512], "utf-8", "strict").size


@pytest.mark.parametrize("how", ["truncate-half", "truncate-tail", "truncate-after-header", "flip",
                                 "flip-start"])
@pytest.mark.parametrize("backup_driver", ["btrfs-send", "tar"])
def test_corrupt_backups_leave_nothing(bt: BtrfsStorage, tmp_path: Path, how: str,
                                       backup_driver: str) -> None:
    make_instance(bt, big=4 * MiB)
    good = tmp_path / "good.backup"
    create_backup(bt, "web", good, driver=backup_driver)
    bad = tmp_path / "bad.backup"
    bad.write_bytes(_damage(good.read_bytes(), how))
    subvols = subvolumes(bt)
    with pytest.raises(InvalidRequest) as exc:
        restore_backup(bt, bad, "restored")
    assert str(bad) in exc.value.message
    assert not bt.instance_path("restored").exists()
    assert not leftovers(bt) and subvolumes(bt) == subvols
    assert bt.instance_names() == ["web"]


def _backup_with(member: str, payload: bytes, header: dict) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        body = json.dumps(header).encode()
        ti = tarfile.TarInfo("ctd-backup.json")
        ti.size = len(body)
        tf.addfile(ti, io.BytesIO(body))
        ti = tarfile.TarInfo(member)
        ti.size = len(payload)
        tf.addfile(ti, io.BytesIO(payload))
    return raw.getvalue()


HEADER = {"format": "ctd-backup", "version": 1, "name": "evil", "meta": {}}


def test_bad_headers_are_refused(bt: BtrfsStorage, tmp_path: Path) -> None:
    cases = {
        "version": ({**HEADER, "version": 99, "driver": "tar"}, "version 99 is not supported"),
        "driver": ({**HEADER, "driver": "zfs-send"}, "driver 'zfs-send' is unknown"),
        "format": ({"hello": 1}, "not a ctd backup"),
    }
    for case, (header, why) in cases.items():
        path = tmp_path / f"{case}.backup"
        path.write_bytes(_backup_with("rootfs.tar.zst", b"", header))
        with pytest.raises(InvalidRequest, match=why):
            restore_backup(bt, path, "evil")
    plain = tmp_path / "plain.tar.gz"  # a rootfs tarball is not a backup
    with tarfile.open(plain, "w:gz") as tf:
        tf.add(__file__, "./etc/x")
    with pytest.raises(InvalidRequest, match="not a ctd backup"):
        restore_backup(bt, plain, "evil")
    assert not bt.instance_path("evil").exists() and not leftovers(bt)


def test_hostile_tar_inside_a_backup(bt: BtrfsStorage, tmp_path: Path) -> None:
    inner = io.BytesIO()
    import zstandard
    with zstandard.ZstdCompressor().stream_writer(inner, closefd=False) as z, \
            tarfile.open(fileobj=z, mode="w|") as tf:
        ti = tarfile.TarInfo("./lnk")
        ti.type, ti.linkname = tarfile.SYMTYPE, str(tmp_path)
        tf.addfile(ti)
        ti = tarfile.TarInfo("./lnk/owned")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"x\n"))
    path = tmp_path / "evil.backup"
    path.write_bytes(_backup_with("rootfs.tar.zst", inner.getvalue(), {**HEADER, "driver": "tar"}))
    with pytest.raises(InvalidRequest, match="symlink"):
        restore_backup(bt, path, "evil")
    assert not (tmp_path / "owned").exists()
    assert not bt.instance_path("evil").exists() and not leftovers(bt) and subvolumes(bt) == []


def test_hostile_btrfs_streams_are_refused(bt: BtrfsStorage, tmp_path: Path) -> None:
    """An incremental stream (its parent would be looked up among this pool's subvolumes) and a
    full stream that clones data from another subvolume are refused before they are applied."""
    work = bt.root / "work"
    work.mkdir()
    btrfsutil.create_subvolume(work / "a")
    (work / "a/secret").write_bytes(os.urandom(256 * 1024))
    btrfsutil.create_snapshot(work / "a", work / "a-ro", read_only=True)
    btrfsutil.create_snapshot(work / "a", work / "a2", read_only=False)
    (work / "a2/more").write_text("x")
    btrfsutil.create_snapshot(work / "a2", work / "a2-ro", read_only=True)
    try:
        incremental = subprocess.run(["btrfs", "send", "-q", "-p", str(work / "a-ro"), str(work / "a2-ro")],
                                     check=True, capture_output=True).stdout
        full = subprocess.run(["btrfs", "send", "-q", str(work / "a-ro")],
                              check=True, capture_output=True).stdout
        other_uuid = btrfsutil.subvolume_info(work / "a2-ro").uuid
    finally:
        for sub in ("a2-ro", "a2", "a-ro", "a"):
            btrfsutil.delete_subvolume(work / sub)
        work.rmdir()
    # btrfs send only makes clone commands for -c sources it also uses as parent, so the
    # full stream that clones another subvolume's data is made by hand: the real stream's
    # header and subvol command, then "clone 256 KiB of subvolume a-ro's file into mine".
    first_len = struct.unpack_from("<I", full, 17)[0]
    cloning = full[:17 + 10 + first_len] + _send_cmd(16, [
        (15, b"o257-5-0"), (18, struct.pack("<Q", 0)), (24, struct.pack("<Q", 256 * 1024)),
        (20, other_uuid), (21, struct.pack("<Q", 7)), (22, b"secret"),
        (23, struct.pack("<Q", 0))]) + _send_cmd(21, [])
    subvols = subvolumes(bt)
    for payload, why in ((incremental, "incremental"), (cloning, "clones data from another"),
                         (b"btrfs-stream\0\x01\0\0\0", "ends early"), (os.urandom(5000), "magic")):
        path = tmp_path / "evil.backup"
        path.write_bytes(_backup_with("rootfs.btrfs", payload, {**HEADER, "driver": "btrfs-send",
                                                                "member": "rootfs.btrfs"}))
        with pytest.raises(InvalidRequest, match=why):
            restore_backup(bt, path, "evil")
        assert not bt.instance_path("evil").exists() and not leftovers(bt)
        assert subvolumes(bt) == subvols


def _send_cmd(cmd: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in attrs)
    return struct.pack("<IHI", len(body), cmd, 0) + body


def _device_nodes(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if stat.S_ISCHR(os.lstat(p).st_mode) or stat.S_ISBLK(os.lstat(p).st_mode))


@pytest.mark.parametrize("backup_driver", ["btrfs-send", "tar"])
def test_device_nodes_are_dropped_from_restores(bt: BtrfsStorage, tmp_path: Path,
                                                backup_driver: str) -> None:
    """Device nodes in dev/ (a loop device: the pool's disk), outside it, and hard links to
    them are not in the restored root; everything else is, and no trace of ctd's tagging."""
    root = make_instance(bt)
    os.mknod(root / "dev/loop0", 0o666 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(root / "home/user/disk", 0o666 | stat.S_IFBLK, os.makedev(8, 0))
    os.link(root / "home/user/disk", root / "home/user/disk-again")
    os.mknod(root / "home/user/mem", 0o4666 | stat.S_IFCHR, os.makedev(1, 1))
    assert len(_device_nodes(root)) == 5
    before = {k: v for k, v in tree(root, skip_dev=True).items() if not k.startswith("home/user/")}
    create_backup(bt, "web", tmp_path / "b", driver=backup_driver)
    restore_backup(bt, tmp_path / "b", "copy")
    copy = bt.rootfs("copy")
    assert _device_nodes(copy) == []
    assert os.listdir(copy / "dev") == []
    assert sorted(os.listdir(copy / "home/user")) == ["abs-link", "notes", "rel-link"]
    after = tree(copy, skip_dev=True)
    assert {k: v for k, v in after.items() if not k.startswith("home/user/")} == before
    assert not any("ctd" in name for v in after.values() for name in v[5])  # no tag left
    assert not leftovers(bt)


def test_btrfs_stream_cannot_write_through_a_device_node(bt: BtrfsStorage, tmp_path: Path) -> None:
    """A crafted stream makes dev/loopX (a loop device this test owns, standing for the pool's)
    and then writes to it: btrfs receive would open the node and write the block device as
    host root. The node is made a plain file before receive sees it, so the write lands in
    that file (which the restore then removes) and the device is untouched."""
    victim = tmp_path / "victim.img"
    victim.write_bytes(b"V" * MiB)
    device = _run("losetup", "--find", "--show", str(victim)).strip()
    try:
        rdev = os.stat(device).st_rdev
        work = bt.root / "work"
        work.mkdir()
        btrfsutil.create_subvolume(work / "a")
        (work / "a/dev").mkdir()
        os.mknod(work / "a/dev/loopX", 0o600 | stat.S_IFBLK, rdev)
        btrfsutil.create_snapshot(work / "a", work / "a-ro", read_only=True)
        try:
            stream = subprocess.run(["btrfs", "send", "-q", str(work / "a-ro")], check=True,
                                    capture_output=True).stdout
        finally:
            for sub in ("a-ro", "a"):
                btrfsutil.delete_subvolume(work / sub)
            work.rmdir()
        end = send_command(21, [])
        assert stream.endswith(end)
        hostile = stream[:-len(end)] + send_command(15, [
            (15, b"dev/loopX"), (18, struct.pack("<Q", 0)), (19, b"PWNED" * 100)]) + end
        path = tmp_path / "evil.backup"
        path.write_bytes(_backup_with("rootfs.btrfs", hostile, {**HEADER, "driver": "btrfs-send",
                                                                "member": "rootfs.btrfs"}))
        restore_backup(bt, path, "evil")
    finally:
        subprocess.run(["losetup", "--detach", device], capture_output=True)  # flushes its cache
    assert victim.read_bytes() == b"V" * MiB, "btrfs receive wrote to the device"
    assert _device_nodes(bt.rootfs("evil")) == [] and os.listdir(bt.rootfs("evil") / "dev") == []
    assert not leftovers(bt)


def test_template_from_an_instance_carries_no_device_nodes(driver: StorageDriver, tmp_path: Path) -> None:
    """A (privileged) guest's mknod stays out of templates made from its root, so instances
    of the template (any tenant's) never get it; hard links to a node go too."""
    from ctd.state import StateDB
    from ctd.template.manager import TemplateManager
    root = make_instance(driver)
    os.mknod(root / "dev/loop0", 0o666 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(root / "home/user/disk", 0o666 | stat.S_IFBLK, os.makedev(8, 0))
    os.link(root / "home/user/disk", root / "home/user/disk-again")
    (tmp_path / "recipes").mkdir()
    manager = TemplateManager(tmp_path / "recipes", StateDB(tmp_path / "ctd.db"), driver)
    record = manager.from_instance_blocking("golden", root, None)
    made = Path(record.path) / "rootfs"
    assert _device_nodes(made) == []
    assert tree(made, skip_dev=True) == {k: v for k, v in tree(root, skip_dev=True).items()
                                         if not k.startswith("home/user/disk")}
    assert len(_device_nodes(root)) == 4  # the instance's own root is left as it is


def test_restore_refuses_data_beyond_its_quota_or_the_pool(bt: BtrfsStorage, tmp_path: Path) -> None:
    """The backup's own disk space limit (or the pool's free space) bounds the data a restore
    writes, checked as the stream flows; a file larger than the whole pool is refused too."""
    root = make_instance(bt)
    (root / "data").write_bytes(os.urandom(3 * MiB))
    subvols = subvolumes(bt)
    for backup_driver in ("btrfs-send", "tar"):
        out = tmp_path / f"q-{backup_driver}.backup"
        create_backup(bt, "web", out, driver=backup_driver, meta={"limits": {"diskspace": 2 * MiB}})
        with pytest.raises(InvalidRequest, match="disk space limit of 2097152 bytes"):
            restore_backup(bt, out, "copy")
        assert not bt.instance_path("copy").exists() and not leftovers(bt) and subvolumes(bt) == subvols
    (root / "data").unlink()
    st = os.statvfs(bt.root)
    with (root / "huge").open("wb") as fh:
        fh.truncate(st.f_blocks * st.f_frsize + GiB)
    for backup_driver, why in (("btrfs-send", "makes a file of"), ("tar", "declares a file of")):
        out = tmp_path / f"huge-{backup_driver}.backup"
        create_backup(bt, "web", out, driver=backup_driver)
        with pytest.raises(InvalidRequest, match=why):
            restore_backup(bt, out, "copy")
        assert not bt.instance_path("copy").exists() and not leftovers(bt) and subvolumes(bt) == subvols


def test_discard_partial_cleans_up_after_a_crash(bt: BtrfsStorage) -> None:
    make_instance(bt)
    staging = bt.root / ".restore-x-1234"
    staging.mkdir()
    btrfsutil.create_subvolume(staging / "rootfs")
    btrfsutil.create_snapshot(bt.rootfs("web"), bt.root / ".backup-web-1234", read_only=True)
    assert sorted(discard_partial(bt)) == [".backup-web-1234", ".restore-x-1234"]
    assert not leftovers(bt)
    assert subvolumes(bt) == ["instances/web/rootfs", "templates/base/rootfs"]


def test_pipe_in_and_out(bt: BtrfsStorage, tmp_path: Path) -> None:
    """Backups stream: to a pipe (spooled in the pool, since tar needs sizes first) and
    restored from one (read front to back, never seeked)."""
    root = make_instance(bt)
    before = tree(root, skip_dev=True)
    r, w = os.pipe()
    sink = tmp_path / "piped.backup"
    cat = subprocess.Popen(["cat"], stdin=r, stdout=sink.open("wb"))
    os.close(r)
    with os.fdopen(w, "wb") as pipe:
        create_backup(bt, "web", pipe)
    assert cat.wait() == 0
    r, w = os.pipe()
    feeder = subprocess.Popen(["cat", str(sink)], stdout=w)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        restore_backup(bt, pipe, "copy")
    feeder.wait()
    assert tree(bt.rootfs("copy"), skip_dev=True) == before


# -- template tarballs with owners (needs root) ----------------------------------------------------

def test_template_import_of_a_gnu_tarball_keeps_owners(driver: StorageDriver, tmp_path: Path) -> None:
    """The way `ctctl template import` runs: new_template_dir, import_rootfs, commit_template,
    with a tarball made by GNU tar the way OpenVZ/Proxmox templates are (numeric owners, ./)."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "usr/bin").mkdir(parents=True)
    (src / "home/u").mkdir(parents=True)
    (src / "etc/os-release").write_text("ID=debian\n")
    (src / "usr/bin/passwd").write_bytes(b"\x7fELF")
    os.chmod(src / "usr/bin/passwd", 0o4755)
    os.chown(src / "home/u", 1000, 100)
    (src / "home/u/.profile").write_text("x")
    os.chown(src / "home/u/.profile", 1000, 100)
    tarball = tmp_path / "debian-12-x86_64.tar.gz"
    _run("tar", "--numeric-owner", "--xattrs", "-C", str(src), "-czf", str(tarball), ".")
    staging = driver.new_template_dir("debian-12")
    import_rootfs(tarball, staging / "rootfs")
    path = driver.commit_template("debian-12", staging)
    assert tree(path / "rootfs") == tree(src)
    out = tmp_path / "export.tar.zst"
    export_rootfs(path / "rootfs", out)
    again = tmp_path / "again"
    again.mkdir()
    import_rootfs(out, again)
    assert tree(again) == tree(src)


# -- numbers for the report -----------------------------------------------------------------------

def _fill_50mb(root: Path) -> None:
    """~50 MB that compresses like a system: host libraries and docs, plus 5 MB of random."""
    budget = 45 * MiB
    dest = root / "usr/lib/copied"
    dest.mkdir(parents=True)
    for base in ("/usr/lib/x86_64-linux-gnu", "/usr/share/doc", "/usr/lib/python3"):
        for dirpath, _dirs, files in os.walk(base):
            for f in sorted(files):
                p = os.path.join(dirpath, f)
                if budget <= 0 or not os.path.isfile(p) or os.path.islink(p):
                    continue
                size = os.path.getsize(p)
                if size > 8 * MiB:
                    continue
                target = dest / os.path.relpath(p, "/").replace("/", "_")
                shutil.copyfile(p, target)
                budget -= size
    (root / "random").write_bytes(os.urandom(5 * MiB))


def test_backup_numbers_50mb(bt: BtrfsStorage, tmp_path: Path) -> None:
    root = make_instance(bt)
    _fill_50mb(root)
    btrfsutil.sync(bt.root)
    size = sum(os.lstat(p).st_blocks * 512 for p in root.rglob("*") if not p.is_symlink())
    lines = [f"\nrootfs: {size / MiB:.1f} MB allocated"]
    for kind in ("btrfs-send", "tar"):
        out = tmp_path / f"{kind}.backup"
        t0 = time.perf_counter()
        create_backup(bt, "web", out, driver=kind)
        t1 = time.perf_counter()
        restore_backup(bt, out, f"r-{kind}")
        t2 = time.perf_counter()
        lines.append(f"{kind:10s}: backup {t1 - t0:5.2f} s, {out.stat().st_size / MiB:6.1f} MB; "
                     f"restore {t2 - t1:5.2f} s")
        assert tree(bt.rootfs(f"r-{kind}"), skip_dev=True) == tree(root, skip_dev=True)
    print("\n".join(lines))
