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


def read_file(rootfs: Path, path: str) -> str | None:
    """Read path inside the guest without following a symlink out of it; None if missing."""
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = open_in_root(root_fd, path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd) as fh:
            return fh.read()
    finally:
        os.close(root_fd)


def make_dirs(rootfs: Path, path: str, mode: int = 0o755) -> None:
    """mkdir -p inside the guest, each step resolved inside the root."""
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
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
    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
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
