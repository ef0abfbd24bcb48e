"""A VM's backup file: the outer tar of format.py with a VM's members, written and restored.

    ctd-backup.json   {"format": "ctd-backup", "version": 1, "type": "vm", "driver": "qemu",
                       "member": "disk.qcow2", "name": ..., "created": ..., "meta": {..., "vm": {...}}}
    disk.qcow2        the disk at one point in time (qcow2: zeros take no room)
    OVMF_VARS.fd      the UEFI variables (a VM with UEFI firmware only)
    tpm.tar           swtpm's state directory (a VM with a TPM only): a flat tar of regular files

The members come in this order, each at most once; anything else refuses the restore.
write_vm_backup() writes the file aside and renames it into place when complete.
restore_vm_backup() builds the VM's directory aside (STORAGE/.restore-NAME-XXXX, 0700, removed by
restore.discard_partial after a crash) and renames it to instances/NAME only when complete:

- disk.qcow2 must fit the pool's free space and its size the disk's (a qcow2 of a disk is at most
  the disk plus its metadata); it is checked as hostile input and converted to the VM's raw disk
  by qcow2.qcow2_to_raw before anything else opens it.
- OVMF_VARS.fd must be exactly as big as this host's UEFI variables template (QEMU maps it as
  the VM's flash, raw: its bytes are the guest's business, its size is not), and only a VM with
  UEFI firmware may have one.
- tpm.tar (at most 1 MiB) may hold only regular files with plain names (no directories, links,
  devices or paths), written with O_EXCL|O_NOFOLLOW into the new tpm/ directory.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ctd.errors import InvalidRequest, OperationFailed
from ctd.storage.backup.format import (
    BLOCK,
    CHUNK,
    HEADER,
    MAX_HEADER,
    RECORD,
    VM_DISK,
    VM_TPM,
    VM_VARS,
    BackupHeader,
    Progress,
    header_block,
    pad,
)
from ctd.storage.backup.qcow2 import qcow2_to_raw
from ctd.storage.backup.restore import restoring
from ctd.storage.backup.writer import write_aside
from ctd.storage.base import StorageDriver

ORDER = (VM_DISK, VM_VARS, VM_TPM)
MAX_TPM = 1 << 20
MAX_TPM_FILES = 16
TPM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class VmExpect:
    """What the checked header says the VM has: what its members must match."""

    disk_size: int            # bytes, the raw disk's exact size
    vars_size: int | None     # UEFI: the size of this host's variables template; None: no UEFI
    tpm: bool                 # whether it may have TPM state


def qcow2_cap(disk_size: int) -> int:
    """The most a qcow2 image of a disk of disk_size bytes can take: the data, L2 tables and
    refcounts (under 1/64 of it with 64 KiB clusters), the header: a generous bound."""
    return disk_size + disk_size // 16 + (16 << 20)


# ------------------------------------------------------------------ writing


def tar_tpm(tpm_dir: Path, out: Path) -> None:
    """swtpm's state directory as a flat tar of its regular files."""
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tf:
        for path in sorted(tpm_dir.iterdir()):
            if path.is_file() and not path.is_symlink() and TPM_NAME.fullmatch(path.name):
                ti = tf.gettarinfo(str(path), arcname=path.name)
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                with open(path, "rb") as fh:
                    tf.addfile(ti, fh)


def write_vm_backup(out: Path, header: BackupHeader, members: list[tuple[str, Path]]) -> int:
    """The backup file at out (written aside, synced, renamed into place when complete): the
    header, then each (member name, file). Returns its size."""
    def fill(fh: BinaryIO) -> int:
        _write(fh, header, members)
        return fh.tell()
    return write_aside(out, fill)


def _write(fh: BinaryIO, header: BackupHeader, members: list[tuple[str, Path]]) -> None:
    now = int(header.get("created_ts", 0))
    body = json.dumps({k: v for k, v in header.items() if k != "created_ts"}, indent=1,
                      sort_keys=True).encode() + b"\n"
    if len(body) > MAX_HEADER:
        raise InvalidRequest(f"the backup's metadata is {len(body)} bytes; at most {MAX_HEADER}")
    fh.write(header_block(HEADER, len(body), now) + body + pad(len(body)))
    for name, path in members:
        with open(path, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            fh.write(header_block(name, size, now))
            left = size
            while left and (data := src.read(min(CHUNK, left))):
                fh.write(data)
                left -= len(data)
            if left:
                raise OperationFailed(f"{path} shrank while it was backed up")
        fh.write(pad(size))
    fh.write(bytes(2 * BLOCK))
    fh.write(bytes(-fh.tell() % RECORD))


# ------------------------------------------------------------------ restoring


def restore_vm_backup(storage: StorageDriver, archive_: Path, new_name: str, expect: VmExpect,
                      progress: Progress | None = None) -> BackupHeader:
    """The VM's directory instances/NEW (disk.raw, and OVMF_VARS.fd, tpm/ when the file has
    them) from a VM's backup file whose header was checked into expect. Returns the header.
    Nothing is left behind on failure. Blocking: run it in a thread."""
    with restoring(storage, archive_, new_name, progress, _rmtree) as restore:
        label = restore.label
        if restore.header.get("type") != "vm":
            raise InvalidRequest(f"{label} is not a VM's backup")
        staging = restore.stage()
        seen = _read_members(restore.tf, label, staging, expect)
        if VM_DISK not in seen:
            raise InvalidRequest(f"{label} is truncated or corrupt: {VM_DISK} is missing")
        qcow2_to_raw(staging / VM_DISK, staging / "disk.raw", expect.disk_size, label)
        (staging / VM_DISK).unlink()
    return restore.header


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _read_members(tf: tarfile.TarFile, label: str, staging: Path, expect: VmExpect) -> list[str]:
    """The members after the header, in ORDER, each checked as the module docstring says."""
    seen: list[str] = []
    while (m := tf.next()) is not None:
        if not m.isreg() or m.name not in ORDER or (seen and ORDER.index(m.name) <= ORDER.index(seen[-1])):
            raise InvalidRequest(f"{label} holds more than a VM's backup (unexpected member "
                                 f"{m.name[:80]!r}; a VM's backup has {', '.join(ORDER)} in this order)")
        if m.name == VM_DISK:
            free = shutil.disk_usage(staging).free
            if m.size > min(qcow2_cap(expect.disk_size), free):
                raise InvalidRequest(f"{label}: its disk image is {m.size} bytes: "
                                     + (f"more than the pool's {free} bytes free; free space and try again"
                                        if m.size > free else
                                        f"more than a qcow2 image of a {expect.disk_size}-byte disk can be"))
            _copy(tf, m, staging / VM_DISK)
        elif m.name == VM_VARS:
            if expect.vars_size is None:
                raise InvalidRequest(f"{label} has UEFI variables, but its header says the VM has no UEFI")
            if m.size != expect.vars_size:
                raise InvalidRequest(f"{label}: its UEFI variables are {m.size} bytes; this host's UEFI "
                                     f"firmware takes {expect.vars_size}")
            _copy(tf, m, staging / VM_VARS)
        else:
            if not expect.tpm:
                raise InvalidRequest(f"{label} has TPM state, but its header says the VM has no TPM")
            if m.size > MAX_TPM:
                raise InvalidRequest(f"{label}: its TPM state is {m.size} bytes; at most {MAX_TPM}")
            member = tf.extractfile(m)
            assert member is not None
            _extract_tpm(member.read(), staging / "tpm", label)
        seen.append(m.name)
    return seen


def _copy(tf: tarfile.TarFile, m: tarfile.TarInfo, dest: Path) -> None:
    member = tf.extractfile(m)
    assert member is not None  # a regular member
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(member, out, CHUNK)
        if out.tell() != m.size:
            raise tarfile.ReadError("unexpected end of data")


def _extract_tpm(data: bytes, dest: Path, label: str) -> None:
    """tpm.tar into dest: regular files with plain names only."""
    dest.mkdir(mode=0o700)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            members = tf.getmembers()
            if len(members) > MAX_TPM_FILES:
                raise InvalidRequest(f"{label}: its TPM state holds {len(members)} files; at most {MAX_TPM_FILES}")
            for m in members:
                if not m.isreg() or not TPM_NAME.fullmatch(m.name):
                    raise InvalidRequest(f"{label}: its TPM state holds {m.name[:80]!r}, which is not a "
                                         "plain file name (swtpm keeps regular files only)")
                src = tf.extractfile(m)
                assert src is not None
                fd = os.open(dest / m.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(src.read())
    except tarfile.TarError as exc:
        raise InvalidRequest(f"{label}: its TPM state is not a valid tar ({exc})") from None
    except FileExistsError:
        raise InvalidRequest(f"{label}: its TPM state names a file twice") from None
