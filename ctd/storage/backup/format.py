"""The backup file format: an uncompressed tar of a ctd-backup.json header and one root member.

    ctd-backup.json     {"format": "ctd-backup", "version": 1, "driver": "btrfs-send" | "tar",
                         "member": ..., "name": ..., "snapshot": ..., "created": ..., "meta": {...}}
    rootfs.btrfs.zst    driver "btrfs-send": `btrfs send` of a read-only snapshot, zstd
 or rootfs.tar.zst      driver "tar": archive.export_rootfs of the root (zstd)

Headers are plain 512-byte GNU tar blocks (header_block), so a backup is written front to back
with one seek back for the root member's size. validate_header() is the one check of a parsed
header a restore trusts (format, version, driver, member, name, meta).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from typing import Any, TypedDict, cast

from ctd.errors import InvalidRequest

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


class BackupHeader(TypedDict, total=False):
    """ctd-backup.json. validate_header checks the fields typed here; the others are read as
    the file says (shown, never trusted). size is only in what create_backup returns."""

    format: str
    version: int
    driver: str
    member: str
    name: str
    meta: dict[str, Any]
    snapshot: object
    source_storage: object
    created: object
    created_ts: int  # only while create_backup writes it (the members' mtime)
    size: int


def header_block(name: str, size: int, mtime: int) -> bytes:
    """One 512-byte GNU header (sizes above 8 GiB in base-256, still one block)."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.type = size, mtime, 0o600, tarfile.REGTYPE
    ti.uname = ti.gname = ""
    buf = ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
    assert len(buf) == BLOCK
    return buf


def pad(n: int) -> bytes:
    """Zeros from n bytes of member data to the end of its last block."""
    return bytes(-n % BLOCK)


def validate_header(header: object) -> BackupHeader:
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
    return cast(BackupHeader, header)
