"""ctd/storage/archive/ without root: hostile tarballs are refused and write nothing anywhere,
truncated/corrupt archives get a clear error, good ones round-trip (modes, setuid, symlinks,
hard links, FIFOs, sparse files, xattrs). Owners need root: tests/host/test_backup.py."""
from __future__ import annotations

import gzip
import io
import lzma
import os
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from ctd.errors import InvalidRequest, OperationFailed
from ctd.storage.archive import compression_for, export_rootfs, import_rootfs

zstandard = pytest.importorskip("zstandard", reason="pip install zstandard (setup.sh does)")


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "",
            mode: int = 0o644, **kw) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.linkname, ti.mtime = kind, mode, linkname, 1_700_000_000
    ti.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti, data


def make_tar(members: list[tuple[tarfile.TarInfo, bytes]], comp: str = "none") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    body = raw.getvalue()
    if comp == "gz":
        return gzip.compress(body)
    if comp == "xz":
        return lzma.compress(body)
    if comp == "zst":
        return zstandard.ZstdCompressor(write_checksum=True).compress(body)
    return body


@pytest.fixture
def place(tmp_path: Path) -> dict[str, Path]:
    """tmp/target (the import target), tmp/canary (a directory next to it that hostile members
    aim at) and tmp/canary/etc, as a symlink target that looks like /etc."""
    target, canary = tmp_path / "x" / "y" / "target", tmp_path / "canary"
    target.mkdir(parents=True)
    (canary / "etc").mkdir(parents=True)
    return {"target": target, "canary": canary, "tmp": tmp_path}


def _everything(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*")}


def _import_bytes(place: dict[str, Path], data: bytes, name: str = "t.tar") -> None:
    path = place["tmp"] / name
    path.write_bytes(data)
    import_rootfs(path, place["target"])


HOSTILE = {
    "absolute": ([_member("/etc/evil", data=b"x")], "absolute path"),
    "dotdot": ([_member("../evil", data=b"x")], "'..'"),
    "dotdot-nested": ([_member("./a/", tarfile.DIRTYPE, mode=0o755),
                       _member("a/../../evil", data=b"x")], "'..'"),
    "dotdot-dir": ([_member("./etc/../../../evil", tarfile.DIRTYPE, mode=0o755)], "'..'"),
    "symlink-then-through": ([_member("./lnk", tarfile.SYMTYPE, linkname="CANARY/etc"),
                              _member("./lnk/passwd", data=b"root::0:0::/:/bin/sh\n")], "symlink"),
    "symlink-deep": ([_member("./a/", tarfile.DIRTYPE, mode=0o755),
                      _member("./a/b", tarfile.SYMTYPE, linkname="../../../../canary"),
                      _member("./a/b/c/d", data=b"x")], "symlink"),
    "symlink-then-dir": ([_member("./lnk", tarfile.SYMTYPE, linkname="CANARY"),
                          _member("./lnk/sub/", tarfile.DIRTYPE, mode=0o755)], "symlink"),
    "hardlink-dotdot": ([_member("./etc/", tarfile.DIRTYPE, mode=0o755),
                         _member("./etc/shadow", tarfile.LNKTYPE, linkname="../../etc/passwd")], "'..'"),
    "hardlink-absolute": ([_member("./passwd", tarfile.LNKTYPE, linkname="/etc/passwd")],
                          "absolute path"),
    "hardlink-missing": ([_member("./passwd", tarfile.LNKTYPE, linkname="./etc/passwd")],
                         "not in the archive"),
    "hardlink-through-symlink": ([_member("./lnk", tarfile.SYMTYPE, linkname="CANARY/etc"),
                                  _member("./hl", tarfile.LNKTYPE, linkname="./lnk/passwd")], "symlink"),
    "dir-replaced": ([_member("./d/", tarfile.DIRTYPE, mode=0o755), _member("./d/f", data=b"x"),
                      _member("./d", data=b"now a file")], "replace a directory"),
    "root-as-file": ([_member("./", data=b"x")], "root"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("comp", ["none", "gz"])
def test_hostile_members_are_refused_and_write_nothing(place: dict[str, Path], case: str, comp: str) -> None:
    members, why = HOSTILE[case]
    fixed = []
    for ti, data in members:
        ti.linkname = ti.linkname.replace("CANARY", str(place["canary"]))
        fixed.append((ti, data))
    # a harmless member first, so the refusal comes after something was written
    good = [_member("./", tarfile.DIRTYPE, mode=0o755), _member("./ok", data=b"fine")]
    before = _everything(place["tmp"])
    with pytest.raises(InvalidRequest) as exc:
        _import_bytes(place, make_tar(good + fixed, comp), f"hostile.tar.{comp}")
    assert why in exc.value.message, exc.value.message
    bad_name = members[-1][0].name.rstrip("/")
    assert repr(bad_name) in exc.value.message or bad_name in exc.value.message
    assert list(place["target"].iterdir()) == []  # emptied again
    assert list((place["canary"] / "etc").iterdir()) == []
    after = _everything(place["tmp"]) - {f"hostile.tar.{comp}"}
    assert after == before, after ^ before
    assert not (place["tmp"] / "x" / "evil").exists() and not (place["tmp"] / "evil").exists()


def _device_nodes(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


@pytest.mark.parametrize("comp", ["gz", "xz", "zst"])
def test_device_nodes_are_dropped_wherever_they_are(place: dict[str, Path], comp: str) -> None:
    """dev/loop0 (b 7:0) let a restored tenant read the pool's block device: no device node
    lands on disk, in dev/ or anywhere else (a chroot's dev/, home/), nor a hard link to one;
    what the archive has besides them is imported and the drop is counted."""
    members = [_member("./", tarfile.DIRTYPE, mode=0o755), _member("./dev/", tarfile.DIRTYPE, mode=0o755),
               _member("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
               _member("./dev/loop0", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o666),
               _member("./dev/null2", tarfile.LNKTYPE, linkname="./dev/null"),
               _member("./dev/fd", tarfile.SYMTYPE, linkname="/proc/self/fd"),
               _member("./home/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o666),
               _member("./home/mem", tarfile.CHRTYPE, devmajor=1, devminor=1, mode=0o4777),
               _member("./srv/chroot/dev/kmsg", tarfile.CHRTYPE, devmajor=1, devminor=11),
               _member("./home/pipe", tarfile.FIFOTYPE, mode=0o600),
               _member("./home/loop-again", tarfile.LNKTYPE, linkname="./dev/loop0"),
               _member("./home/mem", data=b"a file now\n")]  # the last member of a name wins
    path = place["tmp"] / f"t.tar.{comp}"
    path.write_bytes(make_tar(members, comp))
    result = import_rootfs(path, place["target"])
    t = place["target"]
    assert result["skipped_devices"] == 5
    assert _device_nodes(t) == []
    assert sorted(os.listdir(t / "dev")) == ["fd"]
    assert sorted(os.listdir(t / "home")) == ["mem", "pipe"]
    assert (t / "home/mem").read_bytes() == b"a file now\n"
    assert stat.S_ISFIFO(os.lstat(t / "home/pipe").st_mode)  # FIFOs are kept: inert on disk
    assert not os.path.lexists(t / "srv/chroot/dev/kmsg")


def _good_archive() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_member("./", tarfile.DIRTYPE, mode=0o755), _member("./etc/", tarfile.DIRTYPE, mode=0o755),
            _member("./etc/hostname", data=b"guest\n" * 2000),
            _member("./etc/big", data=os.urandom(300_000))]


@pytest.mark.parametrize("comp", ["gz", "xz", "zst", "none"])
def test_truncated_archives_are_refused(place: dict[str, Path], comp: str) -> None:
    data = make_tar(_good_archive(), comp)
    # (a plain tar cut in its zero padding is still whole: see the end-of-archive test below)
    cuts = (len(data) // 2, 600) if comp == "none" else (len(data) // 2, len(data) - 7, 600)
    for cut in cuts:
        with pytest.raises(InvalidRequest, match="is truncated or corrupt"):
            _import_bytes(place, data[:cut], f"cut{cut}.tar.{comp}")
        assert list(place["target"].iterdir()) == []


def test_tar_without_end_blocks_is_truncated(place: dict[str, Path]) -> None:
    data = make_tar(_good_archive())
    # cut exactly after the last member's data: every member is whole, the end-of-archive isn't
    end = len(data.rstrip(b"\0"))
    end += -end % 512
    with pytest.raises(InvalidRequest, match="end-of-archive"):
        _import_bytes(place, data[:end])
    assert list(place["target"].iterdir()) == []


@pytest.mark.parametrize("comp", ["gz", "xz", "zst"])
def test_corrupt_archives_are_refused(place: dict[str, Path], comp: str) -> None:
    data = bytearray(make_tar(_good_archive(), comp))
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xA5
    with pytest.raises(InvalidRequest, match="truncated or corrupt"):
        _import_bytes(place, bytes(data), f"bad.tar.{comp}")
    assert list(place["target"].iterdir()) == []


def test_not_an_archive(place: dict[str, Path]) -> None:
    with pytest.raises(InvalidRequest, match="not a tar archive"):
        _import_bytes(place, b"PK\x03\x04" + os.urandom(2000), "x.zip")
    with pytest.raises(InvalidRequest, match="empty"):
        _import_bytes(place, b"", "empty.tar")
    with pytest.raises(InvalidRequest, match="cannot read"):
        import_rootfs(place["tmp"] / "missing.tar", place["target"])


def test_target_must_be_empty(place: dict[str, Path]) -> None:
    (place["target"] / "x").write_text("x")
    with pytest.raises(OperationFailed, match="not empty"):
        _import_bytes(place, make_tar(_good_archive()))
    assert (place["target"] / "x").read_text() == "x"  # a refused target is not touched


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        kind = stat.S_IFMT(st.st_mode)
        extra: object = None
        if stat.S_ISREG(st.st_mode):
            extra = (path.read_bytes(), st.st_nlink)
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(path)
        mtime = int(st.st_mtime) if not stat.S_ISLNK(st.st_mode) else None
        out[rel] = (kind, stat.S_IMODE(st.st_mode), mtime, extra)
    return out


def _xattr_ok(path: Path) -> bool:
    try:
        os.setxattr(path, "user.ctdtest", b"1")
        os.removexattr(path, "user.ctdtest")
        return True
    except OSError:
        return False


@pytest.mark.parametrize("comp", ["zst", "gz", "xz", "none"])
def test_export_import_round_trip(tmp_path: Path, comp: str) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "usr/bin").mkdir(parents=True)
    (src / "tmp").mkdir()
    (src / "etc/hostname").write_text("guest\n")
    (src / "usr/bin/sudo").write_bytes(b"\x7fELF" + os.urandom(5000))
    os.chmod(src / "usr/bin/sudo", 0o4755)
    (src / "usr/bin/wall").write_bytes(b"w")
    os.chmod(src / "usr/bin/wall", 0o2755)
    os.chmod(src / "tmp", 0o1777)
    os.link(src / "usr/bin/sudo", src / "usr/bin/sudoedit")
    os.symlink("/etc/hostname", src / "abs-link")
    os.symlink("usr/bin", src / "bin")
    os.symlink("../missing", src / "etc/dangling")
    os.mkfifo(src / "etc/fifo", 0o640)
    with (src / "sparse").open("wb") as fh:
        fh.truncate(8 << 20)
        fh.write(b"head")
    (src / "readonly").mkdir()
    (src / "readonly/inside").write_text("ro")
    os.chmod(src / "readonly", 0o555)
    (src / "caf\udce9").write_text("latin-1 name")  # a name that is not UTF-8
    for p in src.rglob("*"):
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    xattrs = _xattr_ok(src / "etc/hostname")
    if xattrs:
        os.setxattr(src / "etc/hostname", "user.note", b"\x00binary\xff")

    out = tmp_path / f"rootfs.tar.{comp}" if comp != "none" else tmp_path / "rootfs.tar"
    calls: list[tuple[int, int]] = []
    written = export_rootfs(src, out, progress=lambda d, t: calls.append((d, t)))
    assert written == out.stat().st_size
    assert calls and calls[-1][0] == calls[-1][1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftover .part

    with tarfile.open(out) if comp != "zst" else tarfile.open(
            fileobj=zstandard.ZstdDecompressor().stream_reader(out.open("rb")), mode="r|") as tf:
        names = []
        for m in tf:
            names.append(m.name)
            assert m.uname == "" and m.gname == ""
    assert names[0] == "." or names[0] == "./"
    assert "./etc/hostname" in names and all(n.startswith(".") for n in names)

    dst = tmp_path / "dst"
    dst.mkdir()
    seen: list[tuple[int, int]] = []
    result = import_rootfs(out, dst, progress=lambda d, t: seen.append((d, t)))
    assert result["members"] == len(names)
    assert seen[-1] == (out.stat().st_size, out.stat().st_size)
    assert _tree(dst) == _tree(src)
    assert os.stat(dst / "usr/bin/sudo").st_ino == os.stat(dst / "usr/bin/sudoedit").st_ino
    assert os.lstat(dst / "sparse").st_blocks * 512 < 1 << 20  # holes stay holes
    assert stat.S_ISFIFO(os.lstat(dst / "etc/fifo").st_mode)
    if xattrs:
        assert os.getxattr(dst / "etc/hostname", "user.note") == b"\x00binary\xff"
    os.chmod(src / "readonly", 0o755)
    os.chmod(dst / "readonly", 0o755)


def test_export_to_a_stream_and_import_from_one(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/os-release").write_text("ID=test\n")
    buf = io.BytesIO()
    n = export_rootfs(src, buf, "zst")
    assert n == len(buf.getvalue()) and buf.getvalue()[:4] == b"\x28\xb5\x2f\xfd"
    dst = tmp_path / "dst"
    dst.mkdir()
    buf.seek(0)
    import_rootfs(buf, dst)
    assert (dst / "etc/os-release").read_text() == "ID=test\n"


def test_export_failure_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(OperationFailed):
        export_rootfs(tmp_path / "missing", tmp_path / "out.tar.zst")
    with pytest.raises(InvalidRequest, match="unknown compression"):
        export_rootfs(tmp_path, tmp_path / "out.tar", "lz4")
    assert list(tmp_path.iterdir()) == []


def test_gnu_tar_layout_with_duplicates_and_implicit_dirs(place: dict[str, Path]) -> None:
    """What real templates look like: ./ first, parents sometimes implicit, a member repeated
    (tar -r appends; the last one wins), a symlink later replaced by a directory."""
    members = [_member("./", tarfile.DIRTYPE, mode=0o755),
               _member("./usr/lib/os-release", data=b"old"),
               _member("./usr/lib/os-release", data=b"new"),
               _member("./var/run", tarfile.SYMTYPE, linkname="/run"),
               _member("./var/run/", tarfile.DIRTYPE, mode=0o755),
               _member("./var/run/x", data=b"inside")]
    _import_bytes(place, make_tar(members, "xz"), "t.tar.xz")
    t = place["target"]
    assert (t / "usr/lib/os-release").read_bytes() == b"new"
    assert (t / "var/run").is_dir() and not (t / "var/run").is_symlink()
    assert (t / "var/run/x").read_bytes() == b"inside"


def test_compression_for() -> None:
    assert compression_for("debian-12-x86_64.tar.gz") == "gz"
    assert compression_for(Path("a/b.TAR.XZ")) == "xz"
    assert compression_for("x.tar.zst") == "zst"
    assert compression_for("x.tgz") == "gz"
    assert compression_for("x.tar") == "none"
    assert compression_for("backup") == "zst"


def test_later_members_replace_symlinks_instead_of_writing_through_them(place: dict[str, Path]) -> None:
    """A symlink pointing outside, a hard link to that symlink, then regular files and a FIFO of
    the same names: each replaces the link; nothing outside is created or changed."""
    victim = place["canary"] / "etc/passwd"
    members = [_member("./", tarfile.DIRTYPE, mode=0o755),
               _member("./lnk", tarfile.SYMTYPE, linkname=str(victim)),
               _member("./hl", tarfile.LNKTYPE, linkname="./lnk"),
               _member("./fifo", tarfile.SYMTYPE, linkname=str(victim)),
               _member("./lnk", data=b"inside\n"),
               _member("./hl", data=b"inside too\n"),
               _member("./fifo", tarfile.FIFOTYPE)]
    _import_bytes(place, make_tar(members, "gz"), "t.tar.gz")
    t = place["target"]
    assert not os.path.lexists(victim)
    assert (t / "lnk").read_bytes() == b"inside\n" and not (t / "lnk").is_symlink()
    assert (t / "hl").read_bytes() == b"inside too\n"
    assert stat.S_ISFIFO(os.lstat(t / "fifo").st_mode)


# -- sizes: what an archive declares against what it holds -----------------------------------------

GiB = 1 << 30
PIECES = {0: b"head", 32 * GiB + 12345: b"middle" * 1000, 64 * GiB - 4: b"tail"}


def _sparse_tarball(tmp: Path, size: int, pieces: dict[int, bytes], fmt: str, flag: str) -> Path:
    """GNU tar --sparse of a file of `size` bytes, holes but for pieces (tar's own detection
    via SEEK_HOLE, as when a template is made from a real root)."""
    src = tmp / "src"
    src.mkdir()
    with (src / "big").open("wb") as fh:
        fh.truncate(size)
        for offset, data in pieces.items():
            fh.seek(offset)
            fh.write(data)
    out = tmp / f"sparse-{fmt}.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", flag, "-cf", str(out), "-C", str(src), "./big"],
                   check=True)
    (src / "big").unlink()
    src.rmdir()
    return out


@pytest.mark.parametrize("fmt,flag", [("gnu", "-z"), ("posix", "-J")])
def test_sparse_tarball_costs_what_it_holds_not_what_it_declares(place: dict[str, Path], fmt: str,
                                                                  flag: str) -> None:
    """A file of 64 GiB of holes is a few hundred bytes of archive; extracting it took ~1 s of
    CPU per declared GiB (tarfile made every hole as zeros). Now holes are seeked over."""
    archive = _sparse_tarball(place["tmp"], 64 * GiB, PIECES, fmt, flag)
    assert archive.stat().st_size < 64 * 1024
    cpu = time.process_time()
    result = import_rootfs(archive, place["target"])
    cpu = time.process_time() - cpu
    big = place["target"] / "big"
    assert result["members"] == 1 and cpu < 1.0, cpu
    st = os.lstat(big)
    assert st.st_size == 64 * GiB and st.st_blocks * 512 < 1 << 20
    with big.open("rb") as fh:
        for offset, data in PIECES.items():
            fh.seek(offset)
            assert fh.read(len(data)) == data
        fh.seek(4 * GiB)
        assert fh.read(4096) == bytes(4096)


def test_file_declaring_more_than_the_filesystem_is_refused_before_writing(place: dict[str, Path]) -> None:
    st = os.statvfs(place["target"])
    fs_size = st.f_blocks * st.f_frsize
    declared = (fs_size // GiB + 1) * GiB
    archive = _sparse_tarball(place["tmp"], declared, {0: b"x"}, "gnu", "-z")
    before = _everything(place["tmp"])
    with pytest.raises(InvalidRequest) as exc:
        import_rootfs(archive, place["target"])
    assert f"declares a file of {declared} bytes" in exc.value.message
    assert f"({fs_size} bytes)" in exc.value.message and "'./big'" in exc.value.message
    assert _everything(place["tmp"]) == before and list(place["target"].iterdir()) == []


def test_data_beyond_the_quota_is_refused_and_holes_do_not_count(place: dict[str, Path]) -> None:
    data = os.urandom(600 * 1024)
    members = [_member("./", tarfile.DIRTYPE, mode=0o755), _member("./a", data=data),
               _member("./b", data=data)]
    path = place["tmp"] / "t.tar.zst"
    path.write_bytes(make_tar(members, "zst"))
    with pytest.raises(InvalidRequest) as exc:
        import_rootfs(path, place["target"], max_bytes=1 << 20)
    assert "'./b'" in exc.value.message and "disk space limit of 1048576 bytes" in exc.value.message
    assert list(place["target"].iterdir()) == []
    import_rootfs(path, place["target"], max_bytes=2 << 20)
    assert (place["target"] / "b").read_bytes() == data
    _empty_dir(place["target"])
    sparse = _sparse_tarball(place["tmp"], 64 * GiB, PIECES, "gnu", "-z")  # 6 KB of data
    import_rootfs(sparse, place["target"], max_bytes=1 << 20)
    assert os.lstat(place["target"] / "big").st_size == 64 * GiB


def _empty_dir(path: Path) -> None:
    for entry in path.iterdir():
        entry.unlink()


@pytest.mark.parametrize("comp", ["zst", "none"])
def test_sparse_files_export_as_sparse_members(tmp_path: Path, comp: str) -> None:
    """A guest's 64 GiB file of holes was read and compressed whole on export (and so in a tar
    backup): ~0.15 s of CPU per GiB for a file any tenant makes with truncate. It is now a PAX
    1.0 sparse member holding only the data, which this import and GNU tar both read back."""
    src, dst, gnu = tmp_path / "src", tmp_path / "dst", tmp_path / "gnu"
    for d in (src, dst, gnu):
        d.mkdir()
    deep = "d" * 90 + "/ünïcode-" + "e" * 80  # past ustar's 100 characters: a PAX path record
    (src / deep).parent.mkdir()
    with (src / deep).open("wb") as fh:
        fh.truncate(2 * GiB)
        fh.write(b"start")
    with (src / "big").open("wb") as fh:
        fh.truncate(64 * GiB)
        for offset, data in PIECES.items():
            fh.seek(offset)
            fh.write(data)
    (src / "dense").write_bytes(os.urandom(3 * 1024 * 1024))
    out = tmp_path / f"out.tar.{comp}" if comp != "none" else tmp_path / "out.tar"
    cpu = time.process_time()
    export_rootfs(src, out, comp)
    assert time.process_time() - cpu < 1.0
    assert out.stat().st_size < 4 * 1024 * 1024
    import_rootfs(out, dst)
    for root in (dst, gnu):
        if root == gnu:
            subprocess.run(["tar", "-xf", str(out), "-C", str(gnu)], check=True)
        st = os.lstat(root / "big")
        assert st.st_size == 64 * GiB and st.st_blocks * 512 < 1 << 20, root
        with (root / "big").open("rb") as fh:
            for offset, data in PIECES.items():
                fh.seek(offset)
                assert fh.read(len(data)) == data
        assert (root / "dense").read_bytes() == (src / "dense").read_bytes()
        with (root / deep).open("rb") as fh:
            assert os.fstat(fh.fileno()).st_size == 2 * GiB and fh.read(5) == b"start"
        assert sorted(os.listdir(root / deep.split("/")[0])) == [deep.split("/")[1]]  # nothing aside


def _meta_header_bomb(kind: bytes, size: int) -> bytes:
    """A tar whose first header is a PAX / GNU long-name header declaring size bytes (zeros),
    gzip-compressed: a few hundred bytes per MiB."""
    ti = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "././@PaxHeader")
    ti.type, ti.size = kind, size
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        gz.write(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
        gz.write(b"20 comment=aaaaaaaa\n" if kind == tarfile.XHDTYPE else b"x")
        zeros = bytes(1 << 20)
        left = size - (20 if kind == tarfile.XHDTYPE else 1) + (-size % 512)
        while left > 0:
            gz.write(zeros[:min(left, len(zeros))])
            left -= len(zeros)
        gz.write(tarfile.TarInfo("./f").tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict") + bytes(1024))
    return raw.getvalue()


@pytest.mark.parametrize("kind,what", [(tarfile.XHDTYPE, "PAX header"),
                                       (tarfile.GNUTYPE_LONGNAME, "GNU long name header")])
def test_huge_pax_and_long_name_headers_are_refused_unread(place: dict[str, Path], kind: bytes,
                                                           what: str) -> None:
    """tarfile reads such a header whole into memory (3 copies): a 510 KB .tgz declaring a
    512 MiB PAX header cost the daemon 1.5 GiB. 64 MiB here (~190 MiB traced before)."""
    import tracemalloc
    data = _meta_header_bomb(kind, 64 << 20)
    assert len(data) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest) as exc:
            _import_bytes(place, data, "bomb.tar.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{what} of {64 << 20} bytes" in exc.value.message and "at most 1048576" in exc.value.message
    assert peak < 32 << 20, peak
    assert list(place["target"].iterdir()) == []
