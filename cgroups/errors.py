"""The one exception type of the cgroups package."""
from __future__ import annotations


class CgroupError(ValueError):
    """A cgroup operation failed or a value was refused.

    It is a ValueError because most failures are a value the kernel or the backend will not
    take; `errno` and `path` say what the kernel answered, when it answered at all.
    """

    def __init__(self, message: str, *, errno: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path
