"""Writing into a guest's root from the host without following the tenant's symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from ctd.linux.openat2 import open_in_root


def write_file(rootfs: Path, path: str, content: str, mode: int = 0o644) -> None:
    """Write path (absolute, inside the guest) so that no symlink can send it elsewhere.

    The parent is resolved with RESOLVE_IN_ROOT (symlinks stay inside the root) and the file
    itself is opened with O_NOFOLLOW; a symlink in its place is replaced, not followed.
    """
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parent, leaf = os.path.split(path)
        dir_fd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                             mode, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno != 40:  # ELOOP: a symlink stands there
                    raise
                os.unlink(leaf, dir_fd=dir_fd)
                fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             mode, dir_fd=dir_fd)
            with os.fdopen(fd, "w") as fh:
                fh.write(content)
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)
