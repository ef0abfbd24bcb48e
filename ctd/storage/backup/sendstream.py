"""The btrfs send stream as a restore checks it on its way into `btrfs receive`.

StreamCheck.feed() passes the stream on command by command. It must be one subvolume whose
`clone` commands only clone from itself (never data of another subvolume on the pool), and end
with its end command. It is a full stream unless the restore expects an increment: then it must
start with a `snapshot` command naming exactly the parent the chain gives (Link: the UUID and
ctransid the previous backup's own stream carried, never what a header claims), and may clone
from that parent too; btrfs receive would otherwise look a named parent up among this host's
subvolumes. Its file data (write, fallocate) must fit the pool's free space
and the disk space limit (archive.checks.Space), and no file may be truncated to more than
the whole pool. Each mknod is rewritten into a mknod of an empty regular file tagged with
DROPPED_XATTR holding a per-restore nonce, so no device node exists on disk at any moment
(btrfs receive runs as host root and would open such a node for a later write command);
receive.drop_placeholders() removes the tagged files after the receive. Refusals raise
InvalidRequest "LABEL: the btrfs stream WHY".
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

from ctd.errors import InvalidRequest
from ctd.storage.archive.checks import Space

SEND_MAGIC = b"btrfs-stream\0"
# btrfs send commands and attributes (include/uapi/linux/btrfs.h's send.h in btrfs-progs)
C_SUBVOL, C_SNAPSHOT, C_MKNOD, C_SET_XATTR, C_WRITE, C_CLONE = 1, 2, 5, 13, 15, 16
C_TRUNCATE, C_END, C_FALLOCATE, C_ENCODED_WRITE = 17, 21, 23, 25
A_CTRANSID, A_CLONE_CTRANSID = 2, 21
A_UUID, A_SIZE, A_MODE, A_RDEV, A_XATTR_NAME, A_XATTR_DATA = 1, 4, 5, 8, 13, 14
A_PATH, A_DATA, A_CLONE_UUID, A_FALLOCATE_MODE = 15, 19, 20, 25
FALLOC_FL_PUNCH_HOLE = 2
# btrfs receive's own buffer holds a command of at most 16 KiB + 128 KiB (v2, encoded writes);
# a bigger one is refused there anyway, after ctd would have held it in memory
MAX_COMMAND = 1 << 20
# Set on the regular file a mknod command is turned into, so it can be found and removed after
# the receive (whatever renames and hard links followed); the value is a per-restore nonce.
DROPPED_XATTR = "trusted.ctd.dropped-device"


@dataclass(frozen=True)
class Link:
    """A received subvolume as its stream named it: what the next increment must name as parent."""

    uuid: bytes
    ctransid: bytes


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


class StreamCheck:
    """Filters a btrfs send stream on its way into btrfs receive. It must be one full subvolume,
    clone only from itself, end with its end command, and write no more file data than the
    space allows (a file's size may not pass the whole filesystem's). Device nodes never reach
    the disk: each mknod becomes a mknod of an empty regular file tagged with DROPPED_XATTR
    (commands that follow - chmod, rename, link, even a write - then act on a harmless file),
    which receive.drop_placeholders removes after the receive. Refusals raise InvalidRequest."""

    def __init__(self, label: str, space: Space | None = None, parent: Link | None = None,
                 nonce: bytes | None = None) -> None:
        self.label, self.space, self.parent = label, space, parent
        self.nonce = nonce or os.urandom(16).hex().encode()   # one for all streams of a chain
        self.buf = bytearray()
        self.version = 0
        self.uuid: bytes | None = None
        self.ctransid = b""
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
        (number,) = struct.unpack("<Q", value)
        return int(number)

    def _command(self, cmd: int, body: memoryview) -> bytes | None:
        """None to pass the command on as it is, or the bytes that replace it."""
        self.commands += 1
        if self.ended:
            raise self._bad("goes on after its end command")
        if self.commands == 1:
            self._first(cmd, self._attrs(body))
        elif cmd in (C_SUBVOL, C_SNAPSHOT):
            raise self._bad("holds more than one subvolume")
        elif cmd == C_CLONE:
            source = self._attrs(body).get(A_CLONE_UUID)
            if source != self.uuid and (self.parent is None or source != self.parent.uuid):
                raise self._bad("clones data from another subvolume (outside its backup chain), which ctd "
                                "never sends and does not accept")
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

    def _first(self, cmd: int, attrs: dict[int, bytes]) -> None:
        """The stream's first command: a full subvolume, or the snapshot of the expected parent."""
        if cmd == C_SNAPSHOT and self.parent is None:
            raise self._bad("is incremental (btrfs send -p) but its backup names no parent; "
                            "restore the chain's last backup, which names its parents")
        if cmd == C_SUBVOL and self.parent is not None:
            raise self._bad("is a full stream where its backup header says incremental (corrupt)")
        if cmd not in (C_SUBVOL, C_SNAPSHOT):
            raise self._bad(f"starts with command {cmd}, not a subvolume (corrupt)")
        if cmd == C_SNAPSHOT:
            assert self.parent is not None
            if (attrs.get(A_CLONE_UUID) != self.parent.uuid
                    or attrs.get(A_CLONE_CTRANSID) != self.parent.ctransid):
                raise self._bad("names a parent subvolume that is not the previous backup of its "
                                "chain (tampered, or backups of another chain)")
        self.uuid, self.ctransid = attrs.get(A_UUID), attrs.get(A_CTRANSID, b"")
        if self.uuid is None:
            raise self._bad("names no subvolume UUID (corrupt)")

    @property
    def link(self) -> Link:
        """What the next increment of the chain must name as its parent (after finish())."""
        assert self.uuid is not None
        return Link(self.uuid, self.ctransid)

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
