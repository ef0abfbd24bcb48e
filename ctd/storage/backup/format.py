"""The backup file format: an uncompressed tar of a ctd-backup.json header and one root member.

    ctd-backup.json     {"format": "ctd-backup", "version": 1, "driver": "btrfs-send" | "tar",
                         "member": ..., "name": ..., "snapshot": ..., "created": ..., "meta": {...},
                         "id": 32 hex, "kind": "full" | "incremental",
                         "parent": {"id": ..., "file": ...}   (incremental only)}
    rootfs.btrfs.zst    driver "btrfs-send": `btrfs send` of a read-only snapshot, zstd
                        (`btrfs send -p PARENT` for an incremental backup)
 or rootfs.tar.zst      driver "tar": archive.export_rootfs of the root (zstd)

An incremental backup names its parent backup by id and by file name (a plain name in the same
directory): a restore follows the names back to the full backup and checks each link (the file
found must carry the id named, its stream must name the previous stream's subvolume).

A VM's backup says "type": "vm" and driver "qemu"; its members are disk.qcow2 and, when the VM
has them, OVMF_VARS.fd and tpm.tar (ctd/storage/backup/vmarchive.py). A header without a type is
a container's.

Headers are plain 512-byte GNU tar blocks (header_block), so a backup is written front to back
with one seek back for the root member's size. validate_header() is the one check of a parsed
header a restore trusts (format, version, driver, member, name, meta).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

from ctd.errors import InvalidRequest

Progress = Callable[[int, int], None]

FORMAT = "ctd-backup"
VERSION = 1
HEADER = "ctd-backup.json"
MEMBERS = {"btrfs-send": "rootfs.btrfs.zst", "tar": "rootfs.tar.zst"}
# What a restore accepts: a plain `btrfs send` stream too (one made by hand, or by a later ctd).
ACCEPTED = {"btrfs-send": ("rootfs.btrfs.zst", "rootfs.btrfs"), "tar": ("rootfs.tar.zst",)}
# A VM's backup: its disk (qcow2), then what it has of UEFI variables and TPM state.
VM_DRIVER = "qemu"
VM_DISK, VM_VARS, VM_TPM = "disk.qcow2", "OVMF_VARS.fd", "tpm.tar"
TYPES = ("container", "vm")
MAX_HEADER = 1 << 20
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
CHUNK = 1 << 20
BACKUP_PREFIX = ".backup-"
RESTORE_PREFIX = ".restore-"
KINDS = ("full", "incremental")
BACKUP_ID = re.compile(r"[0-9a-f]{32}")
# a parent's file name: a plain name in the same directory, never a path or a dot file
PARENT_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:+-]{0,254}")


@dataclass(frozen=True)
class Parent:
    """The backup an incremental one is made against: its id and file name (the header names
    both) and the read-only snapshot that backup was sent from (`btrfs send -p`)."""

    id: str
    file: str
    snapshot: Path


class NicMeta(TypedDict, total=False):
    """A NIC as a backup carries it (an address the restore may not get back)."""

    network: str | None   # None: a routed NIC
    mode: str
    filter: bool
    rate: int | None      # bits per second, both directions
    addresses: list[str]
    mtu: int
    vlan: int


class _VmMetaBase(TypedDict):
    profile: str
    compat: bool
    disk_size: int
    kernel: bool   # direct kernel boot: the restoring host's own kernel is used


class VmMeta(_VmMetaBase, total=False):
    """A VM's part of the meta: what its restore needs beside the disk (never a host path).
    The firmware fields are absent for the windows profile (its firmware is fixed)."""

    firmware: str
    secure_boot: bool
    tpm: bool


class BackupMeta(TypedDict, total=False):
    """The instance's settings a backup carries (ctd/instance/transfer.py writes them, a restore
    reads them back through ctd/instance/restore_plan.py, which trusts none of them)."""

    name: str
    template: str
    hostname: str
    privileged: bool
    limits: dict[str, int]
    init: list[str]
    stop_signal: str
    options: dict[str, object]   # the guest settings, stored form (InstanceOptions.guest_stored)
    nics: list[NicMeta]
    description: str
    tags: dict[str, str]
    vm: VmMeta


class BackupHeader(TypedDict, total=False):
    """ctd-backup.json. validate_header checks the fields typed here; the others are read as
    the file says (shown, never trusted). size is only in what create_backup returns."""

    format: str
    version: int
    type: str      # "container" (also when absent) or "vm"
    driver: str
    member: str
    name: str
    meta: Mapping[str, object]  # BackupMeta as written; as read, JSON that restore_plan checks
    snapshot: object
    source_storage: object
    created: object
    created_ts: int  # only while create_backup writes it (the members' mtime)
    size: int
    id: str
    kind: str
    parent: dict[str, str]


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
    kind = header.setdefault("type", "container")
    if kind not in TYPES:
        raise InvalidRequest(f"backup type {kind!r} is unknown (known: {', '.join(TYPES)})")
    driver = header.get("driver")
    if kind == "vm":
        if driver != VM_DRIVER or header.setdefault("member", VM_DISK) != VM_DISK:
            raise InvalidRequest(f"a VM's backup has driver {VM_DRIVER} and member {VM_DISK} first")
    elif driver not in MEMBERS:
        raise InvalidRequest(f"backup driver {driver!r} is unknown (known: {', '.join(MEMBERS)})")
    elif header.setdefault("member", MEMBERS[driver]) not in ACCEPTED[driver]:
        raise InvalidRequest(f"backup header names member {header['member']!r} for driver {driver}")
    if not isinstance(header.get("meta", {}), dict):
        raise InvalidRequest("backup header: meta is not an object")
    if not isinstance(header.get("name"), str):
        raise InvalidRequest("backup header: name is missing")
    _check_chain_fields(header)
    return cast(BackupHeader, header)


def _check_chain_fields(header: dict[str, Any]) -> None:
    """id, kind and parent (absent in backups of older ctds: a full backup without an id)."""
    backup_id = header.get("id")
    if backup_id is not None and not (isinstance(backup_id, str) and BACKUP_ID.fullmatch(backup_id)):
        raise InvalidRequest("backup header: id is not 32 hex digits")
    kind = header.setdefault("kind", "full")
    if kind not in KINDS:
        raise InvalidRequest(f"backup header: kind {kind!r} is unknown (known: {', '.join(KINDS)})")
    parent = header.get("parent")
    if kind == "full":
        if parent is not None:
            raise InvalidRequest("backup header: a full backup names a parent (corrupt)")
        return
    if header["driver"] != "btrfs-send" or backup_id is None:
        raise InvalidRequest("backup header: an incremental backup must be a btrfs-send one with an id")
    if (not isinstance(parent, dict) or not isinstance(parent.get("id"), str)
            or not BACKUP_ID.fullmatch(parent["id"]) or not isinstance(parent.get("file"), str)
            or not PARENT_FILE.fullmatch(parent["file"]) or set(parent) != {"id", "file"}):
        raise InvalidRequest("backup header: an incremental backup's parent must be {\"id\": 32 hex "
                             "digits, \"file\": a plain file name in the same directory}")
