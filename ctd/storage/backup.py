"""Backups of an instance's root that restore on another ctd host.

A backup is an uncompressed tar (read front to back, so it can come from a pipe) of two members:

    ctd-backup.json     {"format": "ctd-backup", "version": 1, "driver": "btrfs-send" | "tar",
                         "member": ..., "name": ..., "snapshot": ..., "created": ..., "meta": {...}}
    rootfs.btrfs        driver "btrfs-send": the output of `btrfs send` of a read-only snapshot
 or rootfs.tar.zst      driver "tar": archive.export_rootfs of the root (zstd)

create_backup picks btrfs-send when the root is a btrfs subvolume (every block, owner, xattr
and hole exactly as on disk, fast), tar otherwise or on request (driver="tar": portable to a
host on the dir driver). Without a snapshot name it takes a temporary read-only snapshot
(STORAGE/.backup-NAME-XXXX, crash-consistent, deleted afterwards); on the dir driver it reads
the live tree, so stop the instance or name a snapshot for a consistent copy.

restore_backup builds the new instance aside (STORAGE/.restore-NAME-XXXX) and renames it to
instances/NAME only when complete: a failure at any point removes everything it made, and a
crash leaves only a dot-directory that discard_partial() removes at the next start.

A btrfs stream comes from outside, so it is checked as it flows into `btrfs receive --chroot`:
it must be one full subvolume (no incremental `snapshot` command, whose parent would be looked
up among this host's subvolumes) whose `clone` commands only clone from itself (never data of
another subvolume on the pool), and it must end with its end command. Its file data (write,
fallocate) must fit the pool's free space and the disk space limit in the backup's meta, and no
file may be truncated to more than the whole pool.

Device nodes are dropped from every restore, as from template imports (ctd makes each guest's
/dev itself). In a btrfs stream each mknod command is rewritten, before btrfs receive sees it,
into a mknod of an empty regular file tagged with an xattr holding a per-restore nonce: no
device node exists on disk at any moment (btrfs receive runs as host root and would otherwise
open such a node for a later write command: a crafted stream wrote the host's block device
that way), the commands that follow (chmod, rename, link, write) act on a plain file, and
after the receive every name of a tagged file (hard links too) is removed from the writable
copy, in the restore's 0700 staging directory, before it becomes the instance's root. FIFOs
and sockets are kept (inert on disk; ctd never opens a guest's files but through guestfs). A
btrfs-send backup needs btrfs storage to restore: on the dir driver it is refused (make the
backup with driver "tar" for such hosts).

Owners, modes, setuid bits and file capabilities are restored as they were: they are the
guest's ids. A restored root lives under STORAGE/instances/NAME (0700), so no host user can
reach a setuid file in it; inside an unprivileged container uid 0 is the container's base uid.
Only a privileged container runs such a file as host root, as it runs anything it holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import errno
import json
import logging
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ctd.errors import Conflict, CtdError, InvalidRequest, NotFound, NotSupported, OperationFailed
from ctd.storage import archive
from ctd.storage.base import StorageDriver, check_component, unique_suffix

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

FORMAT = "ctd-backup"
VERSION = 1
HEADER = "ctd-backup.json"
MEMBERS = {"btrfs-send": "rootfs.btrfs.zst", "tar": "rootfs.tar.zst"}
# What a restore accepts: a plain `btrfs send` stream too (one made by hand, or by a later ctd).
ACCEPTED = {"btrfs-send": ("rootfs.btrfs.zst", "rootfs.btrfs"), "tar": ("rootfs.tar.zst",)}
MAX_HEADER = 1 << 20
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
CHUNK = 1 << 20
BACKUP_PREFIX = ".backup-"
RESTORE_PREFIX = ".restore-"


def _btrfs(storage: StorageDriver):  # type: ignore[no-untyped-def]
    """The BtrfsStorage behind storage, or None."""
    from ctd.storage.btrfs import BtrfsStorage, btrfsutil
    if isinstance(storage, BtrfsStorage) and btrfsutil is not None:
        return storage
    return None


def _is_subvolume(storage: StorageDriver, path: Path) -> bool:
    bt = _btrfs(storage)
    return bt is not None and bt.is_subvolume(path)


# -- writing the outer tar ----------------------------------------------------------------------

def _header_block(name: str, size: int, mtime: int) -> bytes:
    """One 512-byte GNU header (sizes above 8 GiB in base-256, still one block)."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.type = size, mtime, 0o600, tarfile.REGTYPE
    ti.uname = ti.gname = ""
    buf = ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
    assert len(buf) == BLOCK
    return buf


def _pad(n: int) -> bytes:
    return bytes(-n % BLOCK)


class _Counter:
    """A file object that writes into fh and counts (for tar.zst members and progress)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.count = fh, 0

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        self.fh.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self.fh.flush()

    def writable(self) -> bool:
        return True


def _tree_bytes(path: Path) -> int:
    return archive._data_size(path)


def _send(snap: Path, out, progress: Progress | None, total: int) -> None:  # type: ignore[no-untyped-def]
    """btrfs send of the read-only subvolume snap into out (a file object)."""
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(["btrfs", "send", "-q", str(snap)], stdout=subprocess.PIPE,
                                    stderr=err, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise OperationFailed("the btrfs command is missing; install btrfs-progs") from None
        assert proc.stdout is not None
        last = done = 0
        try:
            while data := proc.stdout.read(CHUNK):
                out.write(data)
                done += len(data)
                if progress is not None and done - last >= 4 * CHUNK:
                    last = done
                    progress(min(done, total), max(total, 1))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if proc.wait() != 0:
            err.seek(0)
            raise OperationFailed(f"btrfs send of {snap} failed: "
                                  f"{err.read().decode(errors='replace').strip()}")


def _write_backup(storage: StorageDriver, fh: BinaryIO, source: Path, driver: str, header: dict,
                  progress: Progress | None) -> int:
    """The outer tar into the seekable fh (from its current position). The rootfs member's
    header is written after its data, once its size is known: nothing is spooled."""
    base = fh.tell()
    now = int(header["created_ts"])
    body = json.dumps({k: v for k, v in header.items() if k != "created_ts"}, indent=1,
                      sort_keys=True).encode() + b"\n"
    if len(body) > MAX_HEADER:
        raise InvalidRequest(f"the backup's metadata is {len(body)} bytes; at most {MAX_HEADER}")
    fh.write(_header_block(HEADER, len(body), now) + body + _pad(len(body)))
    start = fh.tell()
    fh.write(bytes(BLOCK))  # the member's header, written for real below
    out = _Counter(fh)
    total = _tree_bytes(source)
    if driver == "btrfs-send":
        # zstd level 3 on every core: about 2.5 times smaller than the raw stream for a system
        # root, at a fraction of what btrfs send itself costs
        z = archive._zstandard().ZstdCompressor(level=3, write_checksum=True, threads=-1)
        with z.stream_writer(out, closefd=False) as sink:
            _send(source, sink, progress, total)
    else:
        archive.export_rootfs(source, out, "zst", progress)  # type: ignore[arg-type]
    size = out.count
    fh.write(_pad(size))
    end = fh.tell()
    fh.seek(start)
    fh.write(_header_block(header["member"], size, now))
    fh.seek(end)
    fh.write(bytes(2 * BLOCK))
    fh.write(bytes(-(fh.tell() - base) % RECORD))
    if progress is not None:
        progress(max(total, 1), max(total, 1))
    return fh.tell() - base


def create_backup(storage: StorageDriver, name: str, out: Path | BinaryIO, snapshot: str | None = None,
                  progress: Progress | None = None, meta: dict | None = None,
                  driver: str | None = None) -> dict:
    """Write a backup of instance name (or of its snapshot `snapshot`) to out: a path (written
    aside and renamed into place when complete) or a binary file object (a pipe is fine: the
    backup is spooled to a temporary file in the pool first, since tar needs sizes up front).
    meta: what restore_backup hands back (the instance's config). driver: "btrfs-send", "tar"
    or None (btrfs-send where the root is a btrfs subvolume, else tar).
    progress(done, total): bytes of the root processed / its file data (an estimate for
    btrfs-send). Blocking: run it in a thread. Returns the header written, plus "size"."""
    rootfs = storage._existing_rootfs(name)
    source = rootfs
    if snapshot is not None:
        check_component("snapshot", snapshot)
        source = storage.snapshot_path(name, snapshot)
        if not source.is_dir():
            raise NotFound(f"instance {name!r} has no snapshot {snapshot!r}")
    if driver is None:
        driver = "btrfs-send" if _is_subvolume(storage, source) else "tar"
    if driver not in MEMBERS:
        raise InvalidRequest(f"unknown backup driver {driver!r}; use btrfs-send or tar")
    if driver == "btrfs-send" and not _is_subvolume(storage, source):
        raise NotSupported(f"a btrfs-send backup needs the instance's root on btrfs storage "
                           f"(this one is on {storage.name}); use the tar driver")
    now = dt.datetime.now(dt.timezone.utc)
    header = {"format": FORMAT, "version": VERSION, "driver": driver, "member": MEMBERS[driver],
              "name": name, "snapshot": snapshot, "source_storage": storage.name,
              "created": now.isoformat(timespec="seconds"), "created_ts": int(now.timestamp()),
              "meta": meta or {}}

    temp_snap: Path | None = None
    tmp_out: Path | None = None
    try:
        if driver == "btrfs-send":
            bt = _btrfs(storage)
            from ctd.storage.btrfs import btrfsutil
            if snapshot is None or not btrfsutil.get_subvolume_read_only(source):
                temp_snap = storage.root / f"{BACKUP_PREFIX}{name}-{unique_suffix()}"
                with bt._errors(f"snapshotting {source} for the backup"):
                    btrfsutil.create_snapshot(source, temp_snap, read_only=True)
                source = temp_snap
        if isinstance(out, (str, Path)):
            out = Path(out)
            tmp_out = out.parent / f".{out.name}.part-{unique_suffix()}"
            try:
                fd = os.open(tmp_out, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                tmp_out = None
                raise OperationFailed(f"cannot write {out}: {exc.strerror}") from None
            with os.fdopen(fd, "w+b") as fh:
                size = _write_backup(storage, fh, source, driver, header, progress)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_out, out)
            tmp_out = None
        elif _seekable(out):
            size = _write_backup(storage, out, source, driver, header, progress)
        else:
            with tempfile.TemporaryFile(dir=storage.root) as spool:
                size = _write_backup(storage, spool, source, driver, header, progress)  # type: ignore[arg-type]
                spool.seek(0)
                shutil.copyfileobj(spool, out, CHUNK)
            out.flush()
    except OSError as exc:
        raise OperationFailed(f"writing the backup of {name!r} failed: {exc.strerror or exc}") from None
    finally:
        if tmp_out is not None:
            tmp_out.unlink(missing_ok=True)
        if temp_snap is not None:
            storage._remove_root(temp_snap)
    header.pop("created_ts", None)
    header["size"] = size
    return header


def _seekable(fh: BinaryIO) -> bool:
    try:
        return bool(fh.seekable()) and fh.tell() >= 0
    except (OSError, AttributeError, ValueError):
        return False


# -- reading ------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, fh: BinaryIO, progress: Progress | None, total: int) -> None:
        self.fh, self.progress, self.total, self.done, self._last = fh, progress, total, 0, 0
        self.head = b""

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        data = self.fh.read(n)
        self.done += len(data)
        if self.progress is not None and self.done - self._last >= 4 * CHUNK:
            self._last = self.done
            self.progress(self.done, self.total)
        return data


def validate_header(header: object) -> dict:
    """The parsed ctd-backup.json, checked; InvalidRequest says what is wrong."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InvalidRequest("not a ctd backup (its first member is not a ctd-backup header)")
    version = header.get("version")
    if version != VERSION:
        raise InvalidRequest(f"backup format version {version!r} is not supported by this ctd "
                             f"(it reads version {VERSION}); restore it with a newer ctd")
    driver = header.get("driver")
    if driver not in MEMBERS:
        raise InvalidRequest(f"backup driver {driver!r} is unknown (known: {', '.join(MEMBERS)})")
    header.setdefault("member", MEMBERS[driver])
    if header["member"] not in ACCEPTED[driver]:
        raise InvalidRequest(f"backup header names member {header['member']!r} for driver {driver}")
    if not isinstance(header.get("meta", {}), dict):
        raise InvalidRequest("backup header: meta is not an object")
    if not isinstance(header.get("name"), str):
        raise InvalidRequest("backup header: name is missing")
    return header


def _open_archive(archive_: Path | BinaryIO, progress: Progress | None):  # type: ignore[no-untyped-def]
    if isinstance(archive_, (str, Path)):
        try:
            fh = open(archive_, "rb")
        except OSError as exc:
            raise InvalidRequest(f"cannot read {archive_}: {exc.strerror}") from None
        total = os.fstat(fh.fileno()).st_size
        return fh, True, _Reader(fh, progress, total), str(archive_)
    total = archive._size_of(archive_)
    return archive_, False, _Reader(archive_, progress, total), archive._label(archive_)


def _start(reader: _Reader, label: str) -> tarfile.TarFile:
    """The outer tar, with a clear word for what is not a backup at all."""
    head = reader.fh.read(BLOCK)
    reader.done += len(head)
    if not head:
        raise InvalidRequest(f"{label} is empty")
    for comp, magic in archive.MAGICS:
        if head.startswith(magic):
            raise InvalidRequest(f"{label} is a {comp}-compressed file, not a ctd backup (a backup is "
                                 "an uncompressed tar that starts with ctd-backup.json); a root "
                                 "filesystem tarball is imported as a template instead")
    reader.head = head
    try:
        return tarfile.open(fileobj=reader, mode="r|", tarinfo=archive.BoundedTarInfo)  # type: ignore[call-overload]
    except tarfile.ReadError as exc:
        raise InvalidRequest(f"{label} is not a ctd backup, or its start is corrupt ({exc})") from None


def _read_header(tf: tarfile.TarFile, label: str) -> dict:
    m = tf.next()
    if m is None or m.name != HEADER or not m.isreg():
        raise InvalidRequest(f"{label} is not a ctd backup (it does not start with {HEADER})")
    if m.size > MAX_HEADER:
        raise InvalidRequest(f"{label}: {HEADER} is {m.size} bytes, too big to be a backup header")
    data = tf.extractfile(m).read()  # type: ignore[union-attr]
    if len(data) != m.size:
        raise tarfile.ReadError("unexpected end of data")
    try:
        header = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{label}: {HEADER} is not valid JSON ({exc})") from None
    except RecursionError:  # 1 MiB of '[' exhausts the parser's stack
        raise InvalidRequest(f"{label}: {HEADER} nests too deeply to be a backup header") from None
    return validate_header(header)


def read_backup_header(archive_: Path | BinaryIO) -> dict:
    """The header of a backup (name, driver, created, meta ...) without restoring it."""
    fh, own, reader, label = _open_archive(archive_, None)
    try:
        return _read_header(_start(reader, label), label)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidRequest(f"{label} is truncated or corrupt: {exc}") from None
    finally:
        if own:
            fh.close()


# -- btrfs stream checks ------------------------------------------------------------------------

SEND_MAGIC = b"btrfs-stream\0"
# btrfs send commands and attributes (include/uapi/linux/btrfs.h's send.h in btrfs-progs)
C_SUBVOL, C_SNAPSHOT, C_MKNOD, C_SET_XATTR, C_WRITE, C_CLONE = 1, 2, 5, 13, 15, 16
C_TRUNCATE, C_END, C_FALLOCATE, C_ENCODED_WRITE = 17, 21, 23, 25
A_UUID, A_SIZE, A_MODE, A_RDEV, A_XATTR_NAME, A_XATTR_DATA = 1, 4, 5, 8, 13, 14
A_PATH, A_DATA, A_CLONE_UUID, A_FALLOCATE_MODE = 15, 19, 20, 25
FALLOC_FL_PUNCH_HOLE = 2
# btrfs receive's own buffer holds a command of at most 16 KiB + 128 KiB (v2, encoded writes);
# a bigger one is refused there anyway, after ctd would have held it in memory
MAX_COMMAND = 1 << 20
# Set on the regular file a mknod command is turned into, so it can be found and removed after
# the receive (whatever renames and hard links followed); the value is a per-restore nonce.
DROPPED_XATTR = "trusted.ctd.dropped-device"


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C as btrfs send seals each command with it: seed 0, no final inversion. Only the
    few commands ctd rewrites are summed, so a table in Python is fast enough."""
    crc = 0
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def send_command(cmd: int, attrs: list[tuple[int, bytes]]) -> bytes:
    """One btrfs send command with its CRC."""
    body = b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in attrs)
    head = struct.pack("<IHI", len(body), cmd, 0)
    return struct.pack("<IHI", len(body), cmd, crc32c(head + body)) + body


class _StreamCheck:
    """Filters a btrfs send stream on its way into btrfs receive. It must be one full subvolume,
    clone only from itself, end with its end command, and write no more file data than the
    space allows (a file's size may not pass the whole filesystem's). Device nodes never reach
    the disk: each mknod becomes a mknod of an empty regular file tagged with DROPPED_XATTR
    (commands that follow - chmod, rename, link, even a write - then act on a harmless file),
    which _drop_placeholders removes after the receive. Refusals raise InvalidRequest."""

    def __init__(self, label: str, space: archive._Space | None = None) -> None:
        self.label, self.space = label, space
        self.nonce = os.urandom(16).hex().encode()
        self.buf = bytearray()
        self.version = 0
        self.uuid: bytes | None = None
        self.commands = 0
        self.ended = False
        self.written = 0
        self.dropped = 0

    def _bad(self, why: str) -> InvalidRequest:
        return InvalidRequest(f"{self.label}: the btrfs stream {why}")

    def feed(self, data: bytes) -> bytes:
        """Takes the next bytes of the stream; returns what may go on to btrfs receive."""
        self.buf += data
        off = 0
        out = bytearray()
        if not self.version:
            if len(self.buf) < len(SEND_MAGIC) + 4:
                return b""
            if bytes(self.buf[:len(SEND_MAGIC)]) != SEND_MAGIC:
                raise self._bad("does not start with the btrfs-stream magic (corrupt)")
            self.version = struct.unpack_from("<I", self.buf, len(SEND_MAGIC))[0]
            if not 1 <= self.version <= 3:
                raise self._bad(f"has version {self.version}, which ctd does not know")
            off = len(SEND_MAGIC) + 4
            out += self.buf[:off]
        while len(self.buf) - off >= 10:
            length, cmd, _crc = struct.unpack_from("<IHI", self.buf, off)
            if length > MAX_COMMAND:
                raise self._bad(f"has a {length}-byte command; btrfs send makes none over "
                                f"{MAX_COMMAND} (corrupt)")
            if len(self.buf) - off - 10 < length:
                break
            replaced = self._command(cmd, memoryview(self.buf)[off + 10:off + 10 + length])
            out += self.buf[off:off + 10 + length] if replaced is None else replaced
            off += 10 + length
        if off:
            del self.buf[:off]
        return bytes(out)

    def _spans(self, body: memoryview) -> list[tuple[int, int, int]]:
        """(kind, start, size) of each attribute of a command body."""
        spans, off = [], 0
        while off + 2 <= len(body):
            (kind,) = struct.unpack_from("<H", body, off)
            if kind == A_DATA and self.version >= 2:
                spans.append((kind, off + 2, len(body) - off - 2))
                break  # v2: the data attribute runs to the end of the command
            if off + 4 > len(body):
                raise self._bad("has a cut attribute (corrupt)")
            (size,) = struct.unpack_from("<H", body, off + 2)
            if off + 4 + size > len(body):
                raise self._bad("has a cut attribute (corrupt)")
            spans.append((kind, off + 4, size))
            off += 4 + size
        return spans

    def _attrs(self, body: memoryview) -> dict[int, bytes]:
        return {kind: bytes(body[start:start + size]) for kind, start, size in self._spans(body)}

    def _u64(self, attrs: dict[int, bytes], kind: int, cmd: int) -> int:
        value = attrs.get(kind, b"")
        if len(value) != 8:
            raise self._bad(f"has command {cmd} without its 8-byte attribute {kind} (corrupt)")
        return struct.unpack("<Q", value)[0]

    def _command(self, cmd: int, body: memoryview) -> bytes | None:
        """None to pass the command on as it is, or the bytes that replace it."""
        self.commands += 1
        if self.ended:
            raise self._bad("goes on after its end command")
        if self.commands == 1:
            if cmd == C_SNAPSHOT:
                raise self._bad("is incremental (btrfs send -p); a backup must be a full stream")
            if cmd != C_SUBVOL:
                raise self._bad(f"starts with command {cmd}, not a subvolume (corrupt)")
            self.uuid = self._attrs(body).get(A_UUID)
            if self.uuid is None:
                raise self._bad("names no subvolume UUID (corrupt)")
        elif cmd in (C_SUBVOL, C_SNAPSHOT):
            raise self._bad("holds more than one subvolume")
        elif cmd == C_CLONE:
            if self._attrs(body).get(A_CLONE_UUID) != self.uuid:
                raise self._bad("clones data from another subvolume, which ctd never sends and "
                                "does not accept")
        elif cmd == C_MKNOD:
            return self._drop_node(body)
        elif cmd in (C_WRITE, C_ENCODED_WRITE):
            self._charge(len(body))
        elif cmd == C_FALLOCATE:
            attrs = self._attrs(body)
            if not self._u64(attrs, A_FALLOCATE_MODE, cmd) & FALLOC_FL_PUNCH_HOLE:
                self._charge(self._u64(attrs, A_SIZE, cmd))
        elif cmd == C_TRUNCATE:
            size = self._u64(self._attrs(body), A_SIZE, cmd)
            if self.space is not None and size > self.space.fs_size:
                raise self._bad(f"makes a file of {size} bytes, more than the whole filesystem "
                                f"it would land on holds ({self.space.fs_size} bytes)")
        elif cmd == C_END:
            self.ended = True
        return None

    def _charge(self, n: int) -> None:
        self.written += n
        if self.space is not None and self.written > self.space.limit:
            raise self._bad(f"writes more file data than {self.space.what}; free space (or "
                            "raise the limit) and try again")

    def _drop_node(self, body: memoryview) -> bytes:
        """mknod PATH MODE RDEV -> mknod of an empty regular file at PATH, then a set_xattr that
        tags it. btrfs receive keeps one value per attribute kind, so a repeated one (a second
        MODE that would win over the rewritten first) is refused."""
        spans = self._spans(body)
        kinds = [kind for kind, _, _ in spans]
        if len(set(kinds)) != len(kinds):
            raise self._bad("has a mknod command with a repeated attribute (corrupt)")
        new = bytearray(body)
        for kind, start, size in spans:
            if kind in (A_MODE, A_RDEV):
                if size != 8:
                    raise self._bad("has a mknod command with a bad mode or device (corrupt)")
                struct.pack_into("<Q", new, start, stat.S_IFREG | 0o600 if kind == A_MODE else 0)
        path = self._attrs(body).get(A_PATH)
        if path is None or A_MODE not in kinds:
            raise self._bad("has a mknod command without a path or mode (corrupt)")
        self.dropped += 1
        head = struct.pack("<IHI", len(new), C_MKNOD, 0)
        mknod = struct.pack("<IHI", len(new), C_MKNOD, crc32c(head + new)) + new
        return mknod + send_command(C_SET_XATTR, [(A_PATH, path), (A_XATTR_NAME, DROPPED_XATTR.encode()),
                                                  (A_XATTR_DATA, self.nonce)])

    def finish(self) -> None:
        if not self.version or not self.ended or self.buf:
            raise self._bad("ends early (the backup is truncated)")


def _receive(bt, data, dest: Path, label: str, check: _StreamCheck) -> Path:  # type: ignore[no-untyped-def]
    """btrfs receive of the stream data (a file object), filtered by check, into the empty dir
    dest; returns the received read-only subvolume."""
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(["btrfs", "receive", "-q", "-e", "--chroot", str(dest)],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        except FileNotFoundError:
            raise OperationFailed("the btrfs command is missing; install btrfs-progs") from None
        assert proc.stdin is not None
        broken = False
        try:
            while chunk := data.read(CHUNK):
                passed = check.feed(chunk)
                try:
                    proc.stdin.write(passed)
                except BrokenPipeError:
                    broken = True
                    break
            if not broken:
                check.finish()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        rc = proc.wait()
        if rc != 0 or broken:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()
            raise InvalidRequest(f"{label}: btrfs receive refused the stream (corrupt?): {msg}")
    entries = list(dest.iterdir())
    if len(entries) != 1 or not bt.is_subvolume(entries[0]):
        raise InvalidRequest(f"{label}: the btrfs stream did not make exactly one subvolume")
    return entries[0]


def _drop_placeholders(root: Path, nonce: bytes, label: str, expected: int) -> list[str]:
    """Removes every name of the files _StreamCheck made of device nodes (hard links included)
    from the writable root; returns them. root is in a restore's staging directory (0700, no
    container sees it). A device node found here would mean the stream check missed one:
    refused rather than kept."""
    removed = []
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in filenames + dirnames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            rel = os.path.normpath(os.path.join(os.path.relpath(dirpath, root), name))
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                raise InvalidRequest(f"{label}: the restored root holds a device node ({rel}); "
                                     "refused")
            if not expected or not stat.S_ISREG(st.st_mode):
                continue  # expected: mknod commands the stream had (no tags to look for if none)
            try:
                tag = os.getxattr(f"/proc/self/fd/{dirfd}/{name}", DROPPED_XATTR, follow_symlinks=False)
            except OSError:
                continue
            if tag == nonce:
                os.unlink(name, dir_fd=dirfd)
                removed.append(rel)
    return removed


# -- restore ------------------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1


def _rename_noreplace(src: Path, dst: Path) -> None:
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:  # pragma: no cover - glibc < 2.28
        if os.path.lexists(dst):
            raise FileExistsError(str(dst))
        os.rename(src, dst)
        return
    if renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


def _empty_root(storage: StorageDriver, path: Path) -> None:
    bt = _btrfs(storage)
    if bt is not None:
        from ctd.storage.btrfs import btrfsutil
        with bt._errors(f"creating subvolume {path}"):
            btrfsutil.create_subvolume(path)
    else:
        path.mkdir(mode=0o755)


def _quota_of(header: dict) -> int | None:
    """The disk space limit the restored instance will get (its data must fit it)."""
    limits = header.get("meta", {}).get("limits")
    value = limits.get("diskspace") if isinstance(limits, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def restore_backup(storage: StorageDriver, archive_: Path | BinaryIO, new_name: str,
                   progress: Progress | None = None) -> dict:
    """Restore a backup as instance new_name (instances/NEW/rootfs; no snapshots). Returns the
    backup's meta. progress(done, total): archive bytes read / its size (0 for a pipe).
    Refuses (InvalidRequest) a corrupt, truncated or hostile backup, unknown versions, and
    (NotSupported) a btrfs-send backup on non-btrfs storage; Conflict if new_name exists.
    Nothing is left behind on failure. Blocking: run it in a thread."""
    check_component("instance", new_name)
    if os.path.lexists(storage.instance_path(new_name)):
        raise Conflict(f"storage for instance {new_name!r} already exists")
    fh, own, reader, label = _open_archive(archive_, progress)
    staging: Path | None = None
    try:
        tf = _start(reader, label)
        header = _read_header(tf, label)
        driver = header["driver"]
        bt = _btrfs(storage)
        if driver == "btrfs-send" and bt is None:
            raise NotSupported(
                f"{label} is a btrfs-send backup and this host's storage is {storage.name}; "
                "restore it on a host with btrfs storage, or make the backup with the tar driver")
        max_bytes = _quota_of(header)
        m = tf.next()
        if m is None or m.name != header["member"] or not m.isreg():
            raise InvalidRequest(f"{label} is truncated or corrupt: {header['member']} is missing")
        staging = storage.root / f"{RESTORE_PREFIX}{new_name}-{unique_suffix()}"
        staging.mkdir(mode=0o700)
        data = tf.extractfile(m)
        if m.name.endswith(".zst"):
            data = archive._Guard(archive._ZstdReader(data))  # type: ignore[arg-type]
        if driver == "btrfs-send":
            recv = staging / ".received"
            recv.mkdir(mode=0o700)
            check = _StreamCheck(label, archive._Space(recv, max_bytes))
            received = _receive(bt, data, recv, label, check)
            from ctd.storage.btrfs import btrfsutil
            with bt._errors(f"snapshotting {received}"):
                btrfsutil.create_snapshot(received, staging / "rootfs", read_only=False)
            storage._remove_root(recv)
            dropped = _drop_placeholders(staging / "rootfs", check.nonce, label, check.dropped)
            if dropped:
                log.warning("%s: dropped %d device node(s), e.g. %s (ctd makes each guest's "
                            "/dev itself)", label, check.dropped, ", ".join(dropped[:5]))
        else:
            _empty_root(storage, staging / "rootfs")
            archive.import_rootfs(data, staging / "rootfs", label=label,  # type: ignore[arg-type]
                                  max_bytes=max_bytes)  # logs the device nodes it dropped
        if tf.next() is not None:
            raise InvalidRequest(f"{label} holds more than a backup (unexpected members)")
        storage.instance_path(new_name).parent.mkdir(parents=True, exist_ok=True)
        try:
            _rename_noreplace(staging, storage.instance_path(new_name))
        except FileExistsError:
            raise Conflict(f"storage for instance {new_name!r} already exists") from None
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise Conflict(f"storage for instance {new_name!r} already exists") from None
            raise
        staging = None
        if progress is not None:
            progress(reader.done, reader.total or reader.done)
        return header.get("meta", {})
    except (tarfile.TarError, EOFError, archive._Corrupt) as exc:
        raise InvalidRequest(f"{label} is truncated or corrupt: {exc}") from None
    except CtdError:
        raise
    except OSError as exc:
        raise OperationFailed(f"restoring {label} failed: {exc.strerror or exc}") from None
    finally:
        if staging is not None:
            try:
                storage._remove_root(staging)
            except CtdError as exc:
                log.error("could not remove %s after a failed restore: %s", staging, exc)
        if own:
            fh.close()


def discard_partial(storage: StorageDriver) -> list[str]:
    """After a crash: remove temporary backup snapshots and half-restored instances (the dot
    directories at the storage root). Call at start-up, when no backup/restore runs."""
    removed = []
    if not storage.root.is_dir():
        return removed
    for path in sorted(storage.root.iterdir()):
        if path.name.startswith((BACKUP_PREFIX, RESTORE_PREFIX)):
            storage._remove_root(path)
            removed.append(path.name)
    return removed


__all__ = ["create_backup", "restore_backup", "read_backup_header", "validate_header",
           "discard_partial", "FORMAT", "VERSION"]
