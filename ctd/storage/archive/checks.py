"""What an import checks about a member before anything of it is written.

BoundedTarInfo   refuses a PAX or GNU long-name header over MAX_META_HEADER before tarfile
                 reads it whole into memory (HeaderTooBig);
components()     splits a member's name, refusing absolute names and '..' components;
Space            charges each regular member's data, as its header is read, against the free
                 space of the target's filesystem and the quota the root will live under, and
                 checks sparse maps (backups charge btrfs stream writes against it too).

A refusal is Refused("member 'NAME' WHY"); the importer turns it into InvalidRequest.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import cast

from ctd.storage.archive.streams import MiB

MAX_META_HEADER = 1 * MiB  # PAX and GNU long-name headers: xattrs, long paths; never more
META_TYPES = {tarfile.XHDTYPE: "PAX", tarfile.XGLTYPE: "PAX global", tarfile.SOLARIS_XHDTYPE: "PAX",
              tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link"}


class HeaderTooBig(tarfile.HeaderError):
    """A PAX or GNU long-name header bigger than MAX_META_HEADER."""


class BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses huge PAX / GNU long-name headers before tarfile reads them whole
    into memory (three copies: a 510 KB .tgz declaring a 512 MiB PAX header took 1.5 GiB)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        kind = META_TYPES.get(self.type)
        if kind is not None and self.size > MAX_META_HEADER:
            raise HeaderTooBig(f"it has a {kind} header of {self.size} bytes; ctd reads at most "
                               f"{MAX_META_HEADER} (extended attributes and long names need far "
                               "less)")
        # the hook every member passes through (private to tarfile: typeshed does not show it)
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


class Refused(Exception):
    """A member the import does not write: the message names it and says why."""

    def __init__(self, member: str, why: str) -> None:
        super().__init__(f"member {member!r} {why}")


def components(name: str, member: str, what: str = "its name") -> tuple[str, ...]:
    """name's path components below the root; what: how a refusal calls name."""
    if name.startswith("/"):
        raise Refused(member, f"has an absolute path ({what} {name!r}); a root filesystem "
                              "tarball holds paths relative to the root, like ./etc/hostname")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise Refused(member, f"has a '..' component ({what} {name!r}), which could reach "
                              "outside the root")
    return parts


class Space:
    """What an import may write: the data of its files must fit the free space of the target's
    filesystem (and max_bytes, the quota it will live under), and no file may declare more
    bytes than the whole filesystem holds. Charged member by member as headers are read,
    before a member's data is written."""

    def __init__(self, target: Path, max_bytes: int | None) -> None:
        st = os.statvfs(target)
        self.fs_size = st.f_blocks * st.f_frsize
        self.limit = st.f_bavail * st.f_frsize
        self.what = f"the {self.limit} bytes free where it is extracted"
        if max_bytes is not None and max_bytes < self.limit:
            self.limit, self.what = max_bytes, f"its disk space limit of {max_bytes} bytes"
        self.used = 0

    def charge(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> list[tuple[int, int]]:
        """The member's data segments (offset, size); refuses what cannot fit."""
        if m.size > self.fs_size:
            raise Refused(m.name, f"declares a file of {m.size} bytes, more than the whole "
                                  f"filesystem it would land on holds ({self.fs_size} bytes)")
        segments = self._sparse_map(m, tf) if m.issparse() else [(0, m.size)]
        self.used += sum(size for _, size in segments)
        if self.used > self.limit:
            raise Refused(m.name, f"brings the archive's data past {self.what}; free space "
                                  "(or raise the limit) and try again")
        return segments

    @staticmethod
    def _sparse_map(m: tarfile.TarInfo, tf: tarfile.TarFile) -> list[tuple[int, int]]:
        """The sparse map checked: ascending, inside the file, backed by the archive's bytes."""
        segments, end = [], 0
        for offset, size in cast("list[tuple[int, int]] | None", m.sparse) or ():
            if size == 0:
                continue  # GNU tar pads its map with (0, 0)
            if offset < end or size < 0 or offset + size > m.size:
                raise Refused(m.name, "has a sparse map with overlapping or out-of-file "
                                      "segments (corrupt)")
            segments.append((offset, size))
            end = offset + size
        stored = tf.offset - m.offset_data  # the member's data, rounded up to whole blocks
        if sum(size for _, size in segments) > stored:
            raise Refused(m.name, "has a sparse map that claims more data than the archive "
                                  "holds (corrupt)")
        return segments
