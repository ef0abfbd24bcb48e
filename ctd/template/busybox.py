"""Builds the busybox template from Debian's busybox-static: a whole system in ~2 MB."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

from ctd.errors import OperationFailed
from ctd.template.recipe import Recipe

BUSYBOX = Path("/bin/busybox")
_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "etc/ctd", "proc", "sys", "dev", "tmp",
         "root", "run", "var/log", "var/run", "home", "mnt")


def is_static_elf(path: Path) -> bool:
    """True when the ELF file has no PT_INTERP header (needs no dynamic loader)."""
    with path.open("rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # only 64-bit ELF hosts are supported
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def build(recipe: Recipe, rootfs: Path, ctx: object = None) -> None:
    if not BUSYBOX.exists() or not is_static_elf(BUSYBOX):
        raise OperationFailed(
            f"{BUSYBOX} is missing or not statically linked: install it with 'apt-get install busybox-static'")
    for d in _DIRS:
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "root").chmod(0o700)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        link = rootfs / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(rootfs / "bin/busybox", link.parent), link)
    if recipe.files_dir is not None:
        shutil.copytree(recipe.files_dir, rootfs, symlinks=True, dirs_exist_ok=True)
    (rootfs / "etc/shadow").chmod(0o640)
    (rootfs / "etc/hostname").write_text("localhost\n")
