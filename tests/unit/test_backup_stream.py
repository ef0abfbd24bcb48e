"""ctd/storage/backup/sendstream.py's btrfs stream filter without btrfs: what it passes on, what it
rewrites (with a valid checksum), what it refuses. tests/host/test_backup.py runs real streams."""
from __future__ import annotations

import stat
import struct

import pytest

from ctd.errors import InvalidRequest
from ctd.storage.backup.sendstream import DROPPED_XATTR, StreamCheck
from tests.helpers.btrfs import _crc32c, send_command

HEAD = b"btrfs-stream\0" + struct.pack("<I", 1)
SUBVOL = send_command(1, [(15, b"s"), (1, b"U" * 16), (2, struct.pack("<Q", 7))])
END = send_command(21, [])


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def commands(stream: bytes) -> list[tuple[int, dict[int, bytes]]]:
    """Parses a v1 stream, checking every command's CRC as btrfs receive does."""
    out, off = [], len(HEAD)
    while off < len(stream):
        length, cmd, crc = struct.unpack_from("<IHI", stream, off)
        body = stream[off + 10:off + 10 + length]
        assert crc == _crc32c(struct.pack("<IHI", length, cmd, 0) + body), f"bad CRC on command {cmd}"
        attrs, a = {}, 0
        while a < len(body):
            kind, size = struct.unpack_from("<HH", body, a)
            attrs[kind] = body[a + 4:a + 4 + size]
            a += 4 + size
        out.append((cmd, attrs))
        off += 10 + length
    return out


def run(stream: bytes, chunk: int = 7) -> tuple[StreamCheck, bytes]:
    check = StreamCheck("b")
    out = b"".join(check.feed(stream[i:i + chunk]) for i in range(0, len(stream), chunk))
    check.finish()
    return check, out


def test_mknod_becomes_a_tagged_regular_file_and_the_rest_passes_unchanged() -> None:
    mknod = send_command(5, [(15, b"o259-7-0"), (3, u64(259)), (8, u64(0x700)),
                             (5, u64(stat.S_IFBLK | 0o660))])
    fifo = send_command(6, [(15, b"o260-7-0"), (3, u64(260)), (8, u64(0)), (5, u64(stat.S_IFIFO | 0o644))])
    rename = send_command(9, [(15, b"o259-7-0"), (16, b"dev/loop0")])
    check, out = run(HEAD + SUBVOL + mknod + fifo + rename + END)
    assert check.dropped == 1
    cmds = commands(out)
    assert [c for c, _ in cmds] == [1, 5, 13, 6, 9, 21]
    assert struct.unpack("<Q", cmds[1][1][5])[0] == stat.S_IFREG | 0o600
    assert struct.unpack("<Q", cmds[1][1][8])[0] == 0
    assert cmds[2][1] == {15: b"o259-7-0", 13: DROPPED_XATTR.encode(), 14: check.nonce}
    assert out.startswith(HEAD + SUBVOL) and out.endswith(fifo + rename + END)


def test_a_repeated_mode_in_mknod_is_refused() -> None:
    """btrfs receive keeps the last value of an attribute: a second MODE would win over the
    rewritten first one and make the device after all."""
    mknod = send_command(5, [(15, b"x"), (5, u64(stat.S_IFREG)), (8, u64(0x700)),
                             (5, u64(stat.S_IFBLK | 0o660))])
    with pytest.raises(InvalidRequest, match="repeated attribute"):
        run(HEAD + SUBVOL + mknod + END)


@pytest.mark.parametrize("attrs,why", [([(15, b"x"), (8, u64(0))], "without a path or mode"),
                                       ([(15, b"x"), (5, b"\x00\x60")], "bad mode")])
def test_a_malformed_mknod_is_refused(attrs: list[tuple[int, bytes]], why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        run(HEAD + SUBVOL + send_command(5, attrs) + END)


def test_a_command_bigger_than_btrfs_receive_takes_is_refused_before_it_is_buffered() -> None:
    """64 MiB commands were buffered whole (zeros: a few KB of zstd); btrfs send never makes
    one over 16 KiB + 128 KiB."""
    check = StreamCheck("b")
    check.feed(HEAD + SUBVOL)
    with pytest.raises(InvalidRequest, match="2097152-byte command"):
        check.feed(struct.pack("<IHI", 2 << 20, 15, 0) + bytes(4096))
