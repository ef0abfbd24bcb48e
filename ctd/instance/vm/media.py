"""Removable media: `ctctl media insert VM FILE.iso [--boot]` and `ctctl media eject VM`
(POST/DELETE /1.0/instances/{ref}/media), e.g. a rescue ISO.

Every pc/q35 VM has one removable CD-ROM drive, `media0`, after its other CD-ROMs (so the
seed stays /dev/sr0 for ctd's applier), empty unless an ISO is inserted. A running VM takes the
change at once through QMP (blockdev-change-medium / eject, forced: a guest that locked its tray
cannot keep a provider from swapping it); the ISO is kept in the VM's settings, so it is still
there after a restart. With --boot the VM boots from it at its next start (firmware boot order;
a template VM then boots the ISO instead of the host's kernel) until it is ejected.

Hostile input: the path is read by QEMU as root. It must be an absolute path to a readable
regular file, reached through no symlink, outside ctd's state directory and storage pool (no
other VM's disk, no key, no database), checked again at every start (spec validation).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

from ctd.errors import InvalidRequest, NotFound
from ctd.instance.vm.qmp import Qmp
from ctd.state import InstanceRecord
from ctd.state.options import VmOptions

DRIVE_ID = "media0"   # argv.py's removable CD-ROM device


def check_iso(value: Any, forbidden: list[Path], what: str = "ISO") -> Path:
    """An ISO path from a request; InvalidRequest/NotFound saying what is wrong."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or "\n" in value:
        raise InvalidRequest(f"{what} must be an absolute path on the host")
    path = Path(value)
    if os.path.realpath(path) != os.path.normpath(path):
        raise InvalidRequest(f"{what} {value} is reached through a symlink: give the file's real path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{what} {value} does not exist") from None
    except OSError as exc:
        raise InvalidRequest(f"{what} {value} cannot be read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidRequest(f"{what} {value} is not a regular file")
    finally:
        os.close(fd)
    for root in forbidden:
        if path.is_relative_to(os.path.realpath(root)):
            raise InvalidRequest(f"{what} {value} is inside ctd's own files ({root}): copy the ISO elsewhere")
    return path


def stored(vm: VmOptions) -> tuple[Path | None, bool]:
    """(the inserted ISO, boot from it) as the VM's options keep them."""
    return (Path(vm.media) if vm.media else None), bool(vm.media) and vm.boot_media


def store(rec: InstanceRecord, iso: Path | None, boot: bool) -> None:
    """The ISO (None: ejected) and whether to boot it, into rec's options (the caller saves rec)."""
    vm = dataclasses.replace(rec.options.vm or VmOptions(), media=None if iso is None else str(iso),
                             boot_media=iso is not None and boot)
    rec.options = dataclasses.replace(rec.options, vm=vm)


async def insert(qmp: Qmp, iso: Path) -> None:
    await qmp.execute("blockdev-change-medium", {"id": DRIVE_ID, "filename": str(iso), "format": "raw",
                                                 "read-only-mode": "read-only"})


async def eject(qmp: Qmp) -> None:
    await qmp.execute("eject", {"id": DRIVE_ID, "force": True})
