"""A VM disk image from a backup file is hostile input: checked before QEMU ever opens it.

Whoever hands the admin a backup chooses every byte of its qcow2 image. qcow2 can name other
files: a backing file (`-b /etc/shadow`, or `/dev/sda`: the guest would read the host's data
through its own disk, or write into it), an external data file (the same, through the
data-file header extension), and it can carry encryption, internal snapshots, a corrupt
refcount table or a virtual size far beyond what the pool holds. So, in this order:

1. check_header() parses the header in Python (no qemu code has seen the file yet): the qcow2
   magic, version 2 or 3, no backing file, no external data file (incompatible bit 2, header
   extension 0x44415441), no encryption, no internal snapshots, no incompatible feature ctd
   does not know (dirty and corrupt images are refused too), and the exact virtual size the
   backup's header declares for the VM's disk (checked like a create request's --disk).
2. `qemu-img info -f qcow2 --output=json` (format forced: never probed; under prlimit, as
   OpenStack runs it on user images) must say the same: qcow2, no backing file, no data file,
   not encrypted, the same virtual size.
3. `qemu-img check -f qcow2` finds no corruption and no leaks that matter, and the data
   `qemu-img map` finds in it fits the pool's free space (compressed clusters can unpack to
   far more than the image's own size).
4. `qemu-img convert -f qcow2 -O raw` writes the VM's raw disk (sparse: zeros are holes); the
   raw file has exactly the declared size.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

from ctd.errors import InvalidRequest, NotSupported, OperationFailed

MAGIC = b"QFI\xfb"
EXT_END, EXT_DATA_FILE, EXT_ENCRYPTION = 0, 0x44415441, 0x0537BE77
# incompatible feature bits ctd accepts: 3 compression type (zstd), 4 extended L2 entries
KNOWN_INCOMPATIBLE = (1 << 3) | (1 << 4)
INCOMPATIBLE_WHY = {0: "is dirty (not closed cleanly)", 1: "is marked corrupt",
                    2: "names an external data file"}
# qemu-img on a hostile image: bounded address space and CPU time (info, check)
LIMITS = ["prlimit", "--as=1073741824", "--cpu=60"]
MAX_HEADER_WALK = 1 << 16


def _bad(label: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{label}: the VM's disk image {why}; refused")


def check_header(head: bytes, virtual_size: int, label: str) -> None:
    """The qcow2 header (the first bytes of the image, at least its first cluster or 64 KiB)
    checked as the module docstring says; InvalidRequest names what is wrong."""
    if len(head) < 72 or head[:4] != MAGIC:
        raise _bad(label, "is not a qcow2 image")
    version, backing_off, backing_len, cluster_bits, size, crypt = struct.unpack_from(">IQIIQI", head, 4)
    snapshots = struct.unpack_from(">I", head, 60)[0]
    if version not in (2, 3):
        raise _bad(label, f"has qcow2 version {version} (ctd reads 2 and 3)")
    if backing_off or backing_len:
        raise _bad(label, "names a backing file (a backup's disk stands alone)")
    if not 9 <= cluster_bits <= 21:
        raise _bad(label, f"has an impossible cluster size (2^{cluster_bits})")
    if crypt:
        raise _bad(label, "is encrypted")
    if snapshots:
        raise _bad(label, f"holds {snapshots} internal snapshot(s)")
    if size != virtual_size:
        raise _bad(label, f"is {size} bytes big, not the {virtual_size} bytes its backup's header "
                          "gives the VM's disk")
    ext_start = 72
    if version == 3:
        if len(head) < 104:
            raise _bad(label, "has a cut header")
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        for bit in range(64):
            if incompatible & (1 << bit) and not KNOWN_INCOMPATIBLE & (1 << bit):
                raise _bad(label, INCOMPATIBLE_WHY.get(bit, f"needs feature bit {bit}, unknown to ctd"))
        ext_start = struct.unpack_from(">I", head, 100)[0]
    _check_extensions(head, ext_start, min(1 << cluster_bits, MAX_HEADER_WALK), label)


def _check_extensions(head: bytes, off: int, end: int, label: str) -> None:
    """Header extensions up to their end marker: none may name a data file or a key."""
    while True:
        if off + 8 > min(end, len(head)):
            raise _bad(label, "has header extensions that run past its first cluster")
        kind, length = struct.unpack_from(">II", head, off)
        if kind == EXT_END:
            return
        if kind == EXT_DATA_FILE:
            raise _bad(label, "names an external data file")
        if kind == EXT_ENCRYPTION:
            raise _bad(label, "is encrypted")
        off += 8 + (length + 7) // 8 * 8


def _qemu_img(args: list[str], label: str, limited: bool = True) -> str:
    if shutil.which("qemu-img") is None:
        raise NotSupported("qemu-img is missing: apt-get install qemu-utils")
    argv = (LIMITS if limited else []) + ["qemu-img", *args]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3600)
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{label}: qemu-img {args[0]} took more than an hour") from None
    if r.returncode != 0 and not (args[0] == "check" and r.returncode in (2, 3)):
        raise _bad(label, f"is refused by qemu-img {args[0]}: {r.stderr.strip()[-300:]}")
    return r.stdout


def check_info(info: dict[str, Any], virtual_size: int, label: str) -> None:
    """qemu-img info's JSON answer about the image (format forced to qcow2) checked."""
    data = (info.get("format-specific") or {}).get("data") or {}
    if info.get("format") != "qcow2":
        raise _bad(label, f"is read as {info.get('format')!r}, not qcow2")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise _bad(label, "names a backing file (a backup's disk stands alone)")
    if data.get("data-file") or data.get("data-file-raw"):
        raise _bad(label, "names an external data file")
    if info.get("encrypted") or data.get("encrypt"):
        raise _bad(label, "is encrypted")
    if data.get("corrupt") or info.get("dirty-flag"):
        raise _bad(label, "is marked corrupt or dirty")
    if info.get("virtual-size") != virtual_size:
        raise _bad(label, f"is {info.get('virtual-size')} bytes big, not the {virtual_size} bytes its "
                          "backup's header gives the VM's disk")


def qcow2_to_raw(image: Path, raw: Path, virtual_size: int, label: str) -> None:
    """The hostile qcow2 image checked (all four steps) and converted to the raw disk raw."""
    with open(image, "rb") as fh:
        head = fh.read(MAX_HEADER_WALK)
    check_header(head, virtual_size, label)
    try:
        info = json.loads(_qemu_img(["info", "-f", "qcow2", "--output=json", str(image)], label))
    except ValueError:
        raise _bad(label, "is not understood by qemu-img info") from None
    check_info(info, virtual_size, label)
    result = json.loads(_qemu_img(["check", "-f", "qcow2", "--output=json", str(image)], label) or "{}")
    if result.get("corruptions") or result.get("check-errors"):
        raise _bad(label, f"is corrupt ({result.get('corruptions', 0)} corruptions, "
                          f"{result.get('check-errors', 0)} check errors)")
    _check_data(image, raw.parent, label)
    _qemu_img(["convert", "-q", "-f", "qcow2", "-O", "raw", str(image), str(raw)], label, limited=False)
    if raw.stat().st_size != virtual_size:
        raise _bad(label, f"became a raw disk of {raw.stat().st_size} bytes, not {virtual_size}")


def data_bytes(extents: list[dict[str, Any]]) -> int:
    """The bytes `qemu-img map --output=json` says hold data (what convert writes to the raw disk)."""
    return sum(int(e.get("length", 0)) for e in extents if e.get("data") and not e.get("zero"))


def _check_data(image: Path, where: Path, label: str) -> None:
    """The data the image unpacks to must fit the pool: compressed clusters can make a small
    image many times its own size of real data (a pool filled by a 100 MB file)."""
    try:
        extents = json.loads(_qemu_img(["map", "-f", "qcow2", "--output=json", str(image)], label))
    except ValueError:
        raise _bad(label, "is not understood by qemu-img map") from None
    need, free = data_bytes(extents), shutil.disk_usage(where).free
    if need > free:
        raise InvalidRequest(f"{label}: the VM's disk holds {need} bytes of data and the pool has {free} "
                             "bytes free; free space and try again")


def _make(args: list[str], what: str) -> None:
    """qemu-img on ctd's own files (no limits: a big disk takes its time)."""
    if shutil.which("qemu-img") is None:
        raise NotSupported("qemu-img is missing: apt-get install qemu-utils")
    r = subprocess.run(["qemu-img", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise OperationFailed(f"{what} failed: {r.stderr.strip()}")


def raw_to_qcow2(raw: Path, image: Path) -> None:
    """A stopped VM's raw disk (or a snapshot's) as a qcow2 image: zeros stay unallocated."""
    _make(["convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(image)], f"qemu-img convert of {raw}")


def create_qcow2(image: Path, size: int) -> None:
    """An empty qcow2 image of size bytes (a running VM's backup target)."""
    _make(["create", "-q", "-f", "qcow2", str(image), str(size)], f"qemu-img create of {image}")
