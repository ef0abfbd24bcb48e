"""import_rootfs: a (compressed) root filesystem tarball into an empty directory.

The pipeline: streams.Source -> the decompressor its magic bytes name -> streams.Guard ->
tarfile in stream mode with checks.BoundedTarInfo -> extract.Extractor, member by member
(no list of members is kept). How a failure is told (the target is emptied again first, so
nothing of the archive is left; the caller removes the target itself):

- InvalidRequest "LABEL: member 'NAME' WHY; nothing was imported": a member refused (see
  extract and checks), or a PAX / GNU long-name header over checks.MAX_META_HEADER;
- InvalidRequest "LABEL is truncated or corrupt: ...": a compressed stream that stops early or
  fails its checksum, a tar that ends inside a member or without its end-of-archive block;
- OperationFailed: the host's problem writing the target (ENOSPC, EDQUOT, EIO ...);
- NotSupported: a zstd archive without the zstandard module.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO, TypedDict, cast

from ctd.errors import InvalidRequest, OperationFailed
from ctd.storage.archive.checks import BoundedTarInfo, HeaderTooBig, Refused, Space
from ctd.storage.archive.extract import HOST_ERRNOS, Extractor
from ctd.storage.archive.streams import (
    CHUNK,
    Corrupt,
    Guard,
    Progress,
    ProgressMeter,
    Source,
    decompressor,
    detect,
    label_of,
    size_of,
)

log = logging.getLogger(__name__)


class ImportResult(TypedDict):
    """What import_rootfs reports: members read, device nodes dropped."""

    members: int
    skipped_devices: int


def _empty(target: Path) -> None:
    """Remove everything below target (not target itself); symlink-safe."""
    with os.scandir(target) as it:
        entries = list(it)
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            log.warning("could not remove %s after a failed import: %s", entry.path, exc)


def import_rootfs(archive: Path | BinaryIO, target: Path, progress: Progress | None = None, *,
                  same_owner: bool | None = None, label: str | None = None,
                  max_bytes: int | None = None) -> ImportResult:
    """Extract a (compressed) rootfs tarball into the empty directory target (see the module
    doc and extract's for what is refused). progress(done, total) gets archive bytes read and
    the archive's size (0 when it is not a regular file). same_owner: set numeric owners (default: when root).
    Returns {"members": N, "skipped_devices": N}. On failure target is left empty and the
    error is InvalidRequest (bad archive), NotSupported (no zstd module) or OperationFailed.
    label: how messages name the archive (default: its path). max_bytes: the quota the root
    will live under; the files' data must fit it and the free space of target's filesystem."""
    label = label or label_of(archive)
    if same_owner is None:
        same_owner = os.geteuid() == 0
    if not target.is_dir() or target.is_symlink():
        raise OperationFailed(f"import target {target} is not a directory")
    if any(target.iterdir()):
        raise OperationFailed(f"import target {target} is not empty")
    own = isinstance(archive, (str, Path))
    try:
        fh = open(archive, "rb") if isinstance(archive, (str, Path)) else archive
    except OSError as exc:
        raise InvalidRequest(f"cannot read {label}: {exc.strerror}") from None
    extractor: Extractor | None = None
    try:
        prog = ProgressMeter(progress, size_of(fh))
        guard = _open_stream(Source(fh, prog), label)
        extractor = Extractor(target, same_owner, Space(target, max_bytes))
        members = _extract(guard, extractor, label)
        if extractor.skipped_devices:
            log.warning("%s: dropped %d device node(s), e.g. %s (ctd makes each guest's /dev "
                        "itself)", label, extractor.skipped_devices,
                        ", ".join(extractor.skipped_names))
        prog.finish()
        return {"members": members, "skipped_devices": extractor.skipped_devices}
    except BaseException:
        if extractor is not None:
            extractor.close()
            extractor = None
        _empty(target)
        raise
    finally:
        if extractor is not None:
            extractor.close()
        if own:
            fh.close()


def _open_stream(src: Source, label: str) -> Guard:
    """The tar stream inside src, its compression recognised by its magic bytes."""
    head = src.sniff(512)
    if not head:
        raise InvalidRequest(f"{label} is empty")
    comp = detect(head)
    if not comp:
        raise InvalidRequest(f"{label} is not a tar archive (plain, or compressed with gzip, "
                             "xz, zstd or bzip2)")
    return Guard(decompressor(comp, src))


def _extract(guard: Guard, extractor: Extractor, label: str) -> int:
    """Every member of the tar stream into extractor, then its end checked; returns how many
    members it had. Refusals, corruption and write errors become the errors of the module doc."""
    members = 0
    m: tarfile.TarInfo | None = None
    try:
        tf = tarfile.open(fileobj=cast(BinaryIO, guard), mode="r|", tarinfo=BoundedTarInfo)
        while True:
            m = tf.next()
            if m is None:
                break
            tf.members.clear()  # type: ignore[attr-defined]  # a stream: keep no member list in memory
            members += 1
            extractor.add(m, tf)
        if members == 0:
            raise Corrupt("it holds no files")
        _read_to_end(guard, tf)
        extractor.finish()
    except (Refused, HeaderTooBig) as exc:
        raise InvalidRequest(f"{label}: {exc}; nothing was imported") from None
    except (Corrupt, tarfile.TarError, EOFError) as exc:
        raise InvalidRequest(f"{label} is truncated or corrupt: {exc}") from None
    except OSError as exc:
        where = f" (member {m.name!r})" if members and m is not None else ""
        if exc.errno in HOST_ERRNOS:
            raise OperationFailed(f"importing {label} failed{where}: {exc.strerror}") from None
        raise InvalidRequest(f"{label}: cannot extract{where}: {exc.strerror}") from None
    return members


def _read_to_end(guard: Guard, tf: tarfile.TarFile) -> None:
    """Read the padding after the last member to its end (the compression layer checks its
    trailer, CRC and size, there) and insist on the end-of-archive block."""
    end = tf.offset
    budget = 16 * CHUNK
    while budget > 0 and (tail := guard.read(CHUNK)):
        budget -= len(tail)
    if guard.count < end + tarfile.BLOCKSIZE:
        raise Corrupt("the tar stream stops without its end-of-archive block")
