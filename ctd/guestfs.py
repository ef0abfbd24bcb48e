"""Writing into a guest's root from the host without following the tenant's symlinks.

Every path is resolved with openat2(RESOLVE_IN_ROOT), so symlinks stay inside the root. Files
are never opened in place for writing: a new file is made beside the old one and renamed over
it, so a FIFO, a device or a huge sparse file planted by the tenant cannot block or bloat ctd.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ctd.errors import InvalidRequest
from ctd.linux.openat2 import open_in_root

MAX_READ = 1 << 20  # guest files ctd reads (shadow, machine-id, os-release) are small


def _open_root(rootfs: Path) -> int:
    return os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def write_file(rootfs: Path, path: str, content: str, mode: int = 0o644) -> None:
    """Replace path (absolute, inside the guest) by a regular file with content.

    An existing regular file keeps its owner and mode; anything else there (a symlink, a FIFO)
    is replaced, never followed or opened."""
    root_fd = _open_root(rootfs)
    try:
        parent, leaf = os.path.split(path)
        dir_fd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                old = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                old = None
            if old is not None and stat.S_ISDIR(old.st_mode):
                raise InvalidRequest(f"{path} is a directory in the guest; remove it there first")
            temp = f".{leaf}.ctd-{secrets.token_hex(4)}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(content)
                    if old is not None and stat.S_ISREG(old.st_mode):
                        os.fchown(fh.fileno(), old.st_uid, old.st_gid)
                        os.fchmod(fh.fileno(), stat.S_IMODE(old.st_mode))
                    else:
                        os.fchmod(fh.fileno(), mode)
                os.rename(temp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                try:
                    os.unlink(temp, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
                raise
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)


def read_file(rootfs: Path, path: str) -> str | None:
    """A small regular file inside the guest, resolved inside its root; None if missing or
    not a regular file (a FIFO would block, a device could be anything)."""
    root_fd = _open_root(rootfs)
    try:
        try:
            # O_PATH first: a device node the tenant put there is never opened by host root
            # (an open alone acts on some devices: a watchdog starts, a tape rewinds).
            handle = open_in_root(root_fd, path, os.O_PATH)
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                return None
            fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        finally:
            os.close(handle)
        try:
            data = os.read(fd, MAX_READ + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_READ:
            raise InvalidRequest(f"{path} in the guest is larger than {MAX_READ} bytes; ctd will not read it")
        return data.decode(errors="replace")
    finally:
        os.close(root_fd)


def make_dirs(rootfs: Path, path: str, mode: int = 0o755) -> None:
    """mkdir -p inside the guest, each step resolved inside the root."""
    root_fd = _open_root(rootfs)
    try:
        current = "/"
        for part in [p for p in path.split("/") if p]:
            parent_fd = open_in_root(root_fd, current, os.O_PATH | os.O_DIRECTORY)
            try:
                os.mkdir(part, mode, dir_fd=parent_fd)
            except FileExistsError:
                pass
            finally:
                os.close(parent_fd)
            current = os.path.join(current, part)
    finally:
        os.close(root_fd)


def symlink(rootfs: Path, path: str, target: str) -> None:
    """Make path (inside the guest) a symlink to target, replacing a file or link there."""
    root_fd = _open_root(rootfs)
    try:
        parent, leaf = os.path.split(path)
        dir_fd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                os.unlink(leaf, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            os.symlink(target, leaf, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)


def remove_matching(rootfs: Path, directory: str, prefix: str) -> list[str]:
    """Unlink the entries of directory (inside the guest) whose names start with prefix;
    a link is removed, never followed. Returns the names removed."""
    root_fd = _open_root(rootfs)
    try:
        try:
            dir_fd = open_in_root(root_fd, directory, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return []
        try:
            removed = []
            for name in os.listdir(dir_fd):
                if name.startswith(prefix):
                    try:
                        os.unlink(name, dir_fd=dir_fd)
                        removed.append(name)
                    except IsADirectoryError:
                        pass
            return removed
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)
