"""Every filesystem call the backends make, in one class so unit tests can fake the kernel."""
from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from .errors import CgroupError
from .model import DeviceRule


class CgroupFS:
    """Thin wrapper over os. cgroups.fake.FakeKernelFS subclasses it to play the kernel in
    unit tests, which is also why signals go through here: a fake pid must never be
    signalled for real."""

    def read(self, path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read()

    def write(self, path: str, data: str) -> None:
        # No O_CREAT: a control file that is missing means "not supported", never a new file.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def rename(self, path: str, new_path: str) -> None:
        """Only within one parent, and only cgroup v1 can (cgroup2 answers EPERM)."""
        os.rename(path, new_path)

    def subdirs(self, path: str) -> list[str]:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))

    def writable(self, path: str) -> bool:
        return os.access(path, os.W_OK)

    def kill(self, pid: int, sig: int) -> None:
        os.kill(pid, sig)

    def getpid(self) -> int:
        return os.getpid()

    def attach_device_filter(self, path: str, allow: Sequence[DeviceRule]) -> None:
        """cgroup v2: a BPF device program allowing only `allow`, attached to cgroup path."""
        from . import devices_bpf  # ctypes and bpf(): only v2 hosts need them
        devices_bpf.attach(path, allow)

    # Helpers built on the primitives above.

    def read_opt(self, path: str) -> str | None:
        """The file's text, or None when it does not exist."""
        try:
            return self.read(path)
        except FileNotFoundError:
            return None

    def read_int(self, path: str) -> int | None:
        text = self.read_opt(path)
        words = None if text is None else text.split()
        return int(words[0]) if words else None

    def read_keyed(self, path: str) -> dict[str, int] | None:
        """'key value' lines (memory.events, cpu.stat …) -> dict; None when absent."""
        text = self.read_opt(path)
        if text is None:
            return None
        out: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def write_checked(self, path: str, data: str, what: str) -> None:
        """write(), turning a kernel refusal into a CgroupError that names the setting."""
        try:
            self.write(path, data)
        except OSError as e:
            reason = e.strerror or os.strerror(e.errno or 0)
            hint = _HINTS.get(e.errno or 0, "")
            raise CgroupError(
                f"{what}: the kernel refused {data!r} in {path}: {reason}{hint}",
                errno=e.errno, path=path,
            ) from e


_HINTS = {
    errno.EBUSY: " (usage is above the new limit, or the group is busy)",
    errno.ENOSPC: " (the cpuset has no cpus or mems)",
    errno.ENODEV: " (no such block device)",
    errno.ESRCH: " (no such process)",
}
