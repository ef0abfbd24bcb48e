"""The btrfs driver: templates are read-only subvolumes, instance roots writable snapshots.

    templates/NAME/rootfs            read-only subvolume (built in a staging dir's fresh subvolume)
    instances/NAME/rootfs            writable snapshot of the template's rootfs: create copies nothing
    instances/NAME/snapshots/SNAP    read-only snapshots of rootfs
    instances/NAME/.rootfs-new|old   only while a rollback swaps roots

Subvolumes are made, listed and deleted with libbtrfsutil (`btrfsutil`, PyPI 6.10). It has no
qgroup calls, so quota goes through the `btrfs` command (`quota enable`, `qgroup limit`,
`qgroup destroy`); usage and limits are read from /sys/fs/btrfs/<fsid>/qgroups/0_<id>/ when
the kernel has it, else from `btrfs qgroup show --raw`. Limits are on *referenced* bytes: all
the data an instance's root can see, template blocks shared with other instances included —
what `df` inside the instance would say, not what the instance alone costs the pool.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ctd.errors import Conflict, InvalidRequest, NotFound, OperationFailed
from ctd import faults
from ctd.storage.base import (NEW_ROOT, OLD_ROOT, SNAPSHOTS, StorageDriver, StorageInfo,
                              check_component, tree_usage, unique_suffix)

try:
    import btrfsutil
except ImportError as exc:  # pragma: no cover - depends on the host
    btrfsutil = None
    _IMPORT_ERROR = str(exc)
else:
    _IMPORT_ERROR = ""

log = logging.getLogger(__name__)

# _IOR(BTRFS_IOCTL_MAGIC 0x94, 31, struct btrfs_ioctl_fs_info_args /* 1024 bytes */)
BTRFS_IOC_FS_INFO = (2 << 30) | (1024 << 16) | (0x94 << 8) | 31
QGROUP_LIMIT_MAX_RFER = 1
# BTRFS_MAX_LEVEL: trace every dropped subtree, however tall (see own_quota_accounting)
FULL_DROP_TRACING = 8
PENDING_QGROUPS = ".qgroups-pending.json"


def fs_uuid(path: Path) -> str:
    """The filesystem's fsid, which names its /sys/fs/btrfs/ directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(1024)
        fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, buf, True)
    finally:
        os.close(fd)
    return str(uuid.UUID(bytes=bytes(buf[16:32])))


def is_btrfs(path: Path) -> bool:
    if btrfsutil is None:
        return False
    try:
        btrfsutil.subvolume_id(path)
        return True
    except btrfsutil.BtrfsUtilError:
        return False


class BtrfsStorage(StorageDriver):
    name = "btrfs"

    def __init__(self, root: Path, *, enable_quota: bool = False) -> None:
        """enable_quota: turn btrfs quota on in prepare() (ctd's own pool does; on a shared
        filesystem it is turned on by the first set_quota, since qgroups cost the whole
        filesystem a rescan and some bookkeeping on every snapshot delete)."""
        super().__init__(root)
        self.enable_quota = enable_quota
        self._lock = threading.RLock()
        self._sysfs: Path | None = None

    # -- probing -----------------------------------------------------------------------------

    def info(self) -> StorageInfo:
        if btrfsutil is None:
            return StorageInfo("btrfs", str(self.root), False,
                               f"the btrfsutil Python module is missing ({_IMPORT_ERROR}); "
                               "install libbtrfsutil-dev and pip install btrfsutil==6.10")
        probe = self.root if self.root.exists() else self.root.parent
        if not is_btrfs(probe):
            return StorageInfo("btrfs", str(self.root), False, f"{probe} is not on btrfs")
        return StorageInfo("btrfs", str(self.root), True)

    def prepare(self) -> None:
        info = self.info()
        if not info.usable and btrfsutil is None:
            raise OperationFailed(info.reason)
        super().prepare()
        if not is_btrfs(self.root):
            raise OperationFailed(f"{self.root} is not on btrfs; the btrfs storage driver cannot use it")
        if self.enable_quota:
            self.ensure_quota()
            self.own_quota_accounting()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except btrfsutil.BtrfsUtilError as exc:
            raise OperationFailed(f"{what} failed: {exc}") from exc

    # -- subvolume primitives ----------------------------------------------------------------

    @staticmethod
    def is_subvolume(path: Path) -> bool:
        try:
            return btrfsutil.is_subvolume(path)
        except btrfsutil.BtrfsUtilError:
            return False

    def subvolume_ids(self, path: Path) -> list[int]:
        """IDs of the subvolume at path and of every subvolume nested in it."""
        ids = [btrfsutil.subvolume_id(path)]
        ids += [sid for _, sid in btrfsutil.SubvolumeIterator(path)]
        return ids

    def _copy_root(self, source: Path, target: Path, *, read_only: bool) -> None:
        with self._errors(f"snapshotting {source} to {target}"):
            if self.is_subvolume(source):
                # A read-only snapshot cannot be recursive (the kernel refuses); a writable one
                # takes subvolumes the guest made inside its root along.
                btrfsutil.create_snapshot(source, target, read_only=read_only, recursive=not read_only)
                return
            # A root that is a plain directory (made by another driver): copy it, reflinked,
            # into a fresh subvolume so everything made from now on is a snapshot.
            btrfsutil.create_subvolume(target)
        try:
            target.chmod(source.stat().st_mode & 0o7777)
            os.chown(target, source.stat().st_uid, source.stat().st_gid)
            result = subprocess.run(["cp", "-a", "--reflink=auto", "--", f"{source}/.", str(target)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise OperationFailed(f"copying {source} to {target} failed: {result.stderr.strip()}")
            if read_only:
                btrfsutil.set_subvolume_read_only(target, True)
        except BaseException:
            self._remove_root(target)
            raise

    def _remove_root(self, path: Path) -> None:
        """Delete the subvolume at path with everything nested in it, and forget their qgroups;
        a plain directory is walked and any subvolume found in it deleted first."""
        if not os.path.lexists(path):
            return
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
        if self.is_subvolume(path):
            with self._errors(f"deleting subvolume {path}"):
                ids = self.subvolume_ids(path)
                btrfsutil.delete_subvolume(path, recursive=True)
            self._forget_qgroups(ids)
            return
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                self._remove_root(Path(entry.path))
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise OperationFailed(f"could not remove {path}")

    def _carry_over(self, old_root: Path, new_root: Path) -> None:
        limit = self._limit_of(old_root)
        if limit is not None:
            self._set_limit(new_root, limit)

    # -- templates ---------------------------------------------------------------------------

    def new_template_dir(self, template: str) -> Path:
        check_component("template", template)
        staging = self.root / "templates" / f".build-{template}-{unique_suffix()}"
        staging.mkdir(mode=0o700)
        try:
            with self._errors(f"creating subvolume {staging / 'rootfs'}"):
                btrfsutil.create_subvolume(staging / "rootfs")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

    def commit_template(self, template: str, staging: Path) -> Path:
        check_component("template", template)
        final = self.template_path(template)
        if final.exists():
            raise Conflict(f"template {template!r} already exists in storage")
        rootfs = staging / "rootfs"
        with self._errors(f"making {rootfs} read-only"):
            if not self.is_subvolume(rootfs):  # built elsewhere and moved in: make it one
                aside = staging / f".plain-{unique_suffix()}"
                rootfs.rename(aside)
                try:
                    self._copy_root(aside, rootfs, read_only=True)
                finally:
                    shutil.rmtree(aside, ignore_errors=True)
            else:
                btrfsutil.set_subvolume_read_only(rootfs, True)
        try:
            staging.rename(final)
        except BaseException:
            # leave staging writable so the caller's rmtree can clean it up
            btrfsutil.set_subvolume_read_only(rootfs, False)
            raise
        return final

    def delete_template(self, template: str) -> None:
        check_component("template", template)
        path = self.template_path(template)
        if os.path.lexists(path):
            self._remove_root(path)

    def discard_staging(self) -> list[str]:
        """After a crash: half-built templates, interrupted rollbacks and snapshots, qgroups of
        deleted subvolumes the kernel has cleaned up since. Returns what was removed/repaired."""
        removed = []
        for path in (self.root / "templates").glob(".build-*"):
            self._remove_root(path)
            removed.append(path.name)
        removed += self.recover_partial()
        self.purge_qgroups()  # rescans too if the numbers went inconsistent
        return removed

    # -- instances ---------------------------------------------------------------------------

    def create_instance(self, name: str, template: str) -> Path:
        check_component("instance", name)
        check_component("template", template)
        source = self.template_path(template) / "rootfs"
        if not source.is_dir():
            raise NotFound(f"template {template!r} is not in storage")
        target = self.instance_path(name)
        try:
            target.mkdir(mode=0o700)
        except FileExistsError:
            raise Conflict(f"storage for instance {name!r} already exists") from None
        faults.point("storage.create.after_mkdir")
        try:
            self._copy_root(source, target / "rootfs", read_only=False)
        except BaseException:
            self._remove_root(target)
            raise
        return target / "rootfs"

    def delete_instance(self, name: str) -> None:
        check_component("instance", name)
        base = self.instance_path(name)
        if not os.path.lexists(base):
            return
        # Snapshots first, then the roots, then the (plain) directories around them.
        snaps = base / SNAPSHOTS
        if snaps.is_dir() and not self.is_subvolume(snaps):
            for entry in sorted(snaps.iterdir()):
                self._remove_root(entry)
        faults.point("storage.delete.after_snapshots")
        for sub in ("rootfs", NEW_ROOT, OLD_ROOT):
            self._remove_root(base / sub)
        faults.point("storage.delete.after_roots")
        self._remove_root(base)

    # -- quota -------------------------------------------------------------------------------

    def _sysfs_dir(self) -> Path | None:
        if self._sysfs is None:
            try:
                path = Path("/sys/fs/btrfs") / fs_uuid(self.root)
            except OSError:
                return None
            if path.is_dir():
                self._sysfs = path
        return self._sysfs

    def _btrfs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(["btrfs", *args], capture_output=True, text=True)
        except FileNotFoundError:
            raise OperationFailed("the btrfs command is missing; install btrfs-progs") from None
        if check and result.returncode != 0:
            raise OperationFailed(f"btrfs {' '.join(args)} failed: "
                                  f"{(result.stderr or result.stdout).strip()}")
        return result

    def quota_enabled(self) -> bool:
        sysfs = self._sysfs_dir()
        if sysfs is not None:
            return (sysfs / "qgroups").is_dir()
        return self._btrfs("qgroup", "show", str(self.root), check=False).returncode == 0

    def ensure_quota(self) -> None:
        """Turn btrfs quota on for the filesystem once, and wait for its first rescan (instant
        on a new pool; proportional to the data on a filesystem that already holds some)."""
        with self._lock:
            if self.quota_enabled():
                return
            log.info("enabling btrfs quota on %s", self.root)
            self._btrfs("quota", "enable", str(self.root))
            self._btrfs("quota", "rescan", "-w", str(self.root), check=False)

    def own_quota_accounting(self) -> None:
        """On ctd's own pool: have the kernel account every subvolume drop. By default (6.x
        kernels, threshold 3) dropping a snapshot whose shared subtree is 3 levels or taller
        marks all qgroup numbers inconsistent, and an inconsistent filesystem stops qgroup
        accounting altogether: no limit holds until a rescan (measured here: a 20M limit let
        40M through). Full tracing costs some CPU at the commit after a large delete. The
        setting is per mount and not persistent, so it is made at every prepare."""
        sysfs = self._sysfs_dir()
        knob = sysfs / "qgroups" / "drop_subtree_threshold" if sysfs else None
        if knob is None or not knob.exists():
            return
        try:
            knob.write_text(str(FULL_DROP_TRACING))
        except OSError as exc:
            log.warning("cannot raise %s to %d: %s", knob, FULL_DROP_TRACING, exc)

    def quota_consistent(self) -> bool | None:
        """False when the kernel marked qgroup numbers inconsistent (it does so when it drops
        a subvolume taller than qgroups/drop_subtree_threshold, and after a crash); None when
        quota is off or the kernel does not say."""
        sysfs = self._sysfs_dir()
        if sysfs is None or not (sysfs / "qgroups").is_dir():
            return None
        try:
            return (sysfs / "qgroups" / "inconsistent").read_text().strip() == "0"
        except OSError:
            return None

    def repair_quota(self, *, wait: bool = False) -> bool:
        """Start (and with wait, finish) a qgroup rescan if the numbers are inconsistent;
        returns whether one was needed. While they are, the kernel accounts nothing and no
        limit holds, so whatever sets a limit waits for the rescan."""
        if self.quota_consistent() is not False:
            return False
        log.warning("btrfs qgroup numbers on %s are inconsistent; rescanning", self.root)
        # fails harmlessly (EINPROGRESS) when one is running already; -W waits without a new one
        self._btrfs("quota", "rescan", str(self.root), check=False)
        if wait:
            self._btrfs("quota", "rescan", "-W", str(self.root), check=False)
        return True

    def _qgroup(self, subvol_id: int) -> dict[str, int] | None:
        """referenced, exclusive, limit (max_referenced, or None) of qgroup 0/subvol_id;
        None when quota is off or the qgroup does not exist."""
        sysfs = self._sysfs_dir()
        if sysfs is not None:
            if not (sysfs / "qgroups").is_dir():
                return None
            q = sysfs / "qgroups" / f"0_{subvol_id}"
            try:
                flags = int((q / "limit_flags").read_text())
                return {"referenced": int((q / "referenced").read_text()),
                        "exclusive": int((q / "exclusive").read_text()),
                        "limit": (int((q / "max_referenced").read_text())
                                  if flags & QGROUP_LIMIT_MAX_RFER else None)}
            except OSError as exc:  # ENODEV: the kernel removed the qgroup while it was read
                if exc.errno not in (errno.ENOENT, errno.ENODEV):
                    raise
                return None
        result = self._btrfs("qgroup", "show", "--raw", "-r", str(self.root), check=False)
        for line in result.stdout.splitlines():
            fields = line.split()
            if fields and fields[0] == f"0/{subvol_id}" and len(fields) >= 4:
                return {"referenced": int(fields[1]), "exclusive": int(fields[2]),
                        "limit": None if fields[3] == "none" else int(fields[3])}
        return None

    def subvolume_usage(self, path: Path, *, sync: bool = True) -> dict[str, int] | None:
        """Qgroup figures of the subvolume at path (see _qgroup); sync first for fresh ones."""
        if sync:
            btrfsutil.sync(self.root)
        return self._qgroup(btrfsutil.subvolume_id(path))

    def _limit_of(self, root: Path) -> int | None:
        q = self._qgroup(btrfsutil.subvolume_id(root))
        return q["limit"] if q else None

    def _set_limit(self, root: Path, limit: int | None) -> None:
        subvol_id = btrfsutil.subvolume_id(root)
        self._btrfs("qgroup", "limit", "none" if limit is None else str(limit),
                    f"0/{subvol_id}", str(self.root))

    def set_quota(self, name: str, limit: int | None) -> None:
        rootfs = self._existing_rootfs(name)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
            raise InvalidRequest(f"disk limit must be a positive number of bytes, not {limit!r}")
        if limit is None and not self.quota_enabled():
            return
        self.ensure_quota()
        self.repair_quota(wait=True)
        self._set_limit(rootfs, limit)

    def quota(self, name: str) -> int | None:
        return self._limit_of(self._existing_rootfs(name))

    def usage(self, name: str, fresh: bool = False) -> int:
        """Referenced bytes of name's root (template data it shares included); with quota off,
        a du-like walk of the tree. fresh: commit the filesystem first (costly with many
        subvolumes: only where a decision depends on it)."""
        rootfs = self._existing_rootfs(name)
        if self.quota_enabled():
            q = self.subvolume_usage(rootfs, sync=fresh)
            if q is not None:
                return q["referenced"]
        return tree_usage(rootfs)

    def _forget_qgroups(self, ids: list[int]) -> None:
        """Destroy the qgroups of deleted subvolumes. The kernel refuses (EBUSY) until its
        cleaner has dropped the subvolume; recent kernels then delete the qgroup themselves.
        What is left is retried by purge_qgroups()."""
        if not ids or not self.quota_enabled():
            return
        with self._lock:
            pending = set(self._read_pending()) | set(ids)
            self._write_pending(sorted(pending))
        self.purge_qgroups()

    def _pending_file(self) -> Path:
        return self.root / PENDING_QGROUPS

    def _read_pending(self) -> list[int]:
        try:
            return [int(i) for i in json.loads(self._pending_file().read_text())]
        except (FileNotFoundError, ValueError, TypeError):
            return []

    def _write_pending(self, ids: list[int]) -> None:
        path = self._pending_file()
        if not ids:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(ids))
        tmp.rename(path)

    def purge_qgroups(self) -> list[int]:
        """Destroy the qgroups of subvolumes ctd deleted whose cleanup has finished (only
        those: other qgroups on a shared filesystem are not ctd's). Returns what is left."""
        with self._lock:
            pending = self._read_pending()
            if not pending:
                return []
            if not self.quota_enabled():
                self._write_pending([])
                return []
            still_deleting = set(btrfsutil.deleted_subvolumes(self.root))
            left = []
            for sid in pending:
                numbers = self._qgroup(sid)
                if numbers is None:
                    continue  # gone (the kernel removed it)
                if sid not in still_deleting and self._subvolume_exists(sid):
                    continue  # never happens (btrfs does not reuse ids); not ours to touch then
                if sid in still_deleting or numbers["referenced"] or numbers["exclusive"]:
                    # The drop's accounting lands at the commit after the cleaner is done;
                    # a qgroup destroyed before, with bytes still on it, marks every qgroup
                    # inconsistent (seen here). Recent kernels remove it themselves at zero.
                    left.append(sid)
                    continue
                result = self._btrfs("qgroup", "destroy", f"0/{sid}", str(self.root), check=False)
                if result.returncode != 0 and self._qgroup(sid) is not None:
                    left.append(sid)
            self._write_pending(left)
        self.repair_quota()
        return left

    def _subvolume_exists(self, sid: int) -> bool:
        try:
            btrfsutil.subvolume_info(self.root, sid)
            return True
        except btrfsutil.BtrfsUtilError:
            return False

    def wait_cleanup(self, timeout: float = 60.0) -> None:
        """Wait until the kernel has dropped every deleted subvolume (like `btrfs subvolume
        sync`), then purge their qgroups. Nothing needs this but tests and `ctctl storage`."""
        deadline = time.monotonic() + timeout
        btrfsutil.sync(self.root)
        while btrfsutil.deleted_subvolumes(self.root):
            if time.monotonic() > deadline:
                raise OperationFailed(f"btrfs did not finish deleting subvolumes within {timeout} s")
            time.sleep(0.05)
        btrfsutil.sync(self.root)
        self.purge_qgroups()

    def pool_info(self) -> dict:
        out = super().pool_info()
        out["quota"] = self.quota_enabled()
        if out["quota"]:
            out["quota_consistent"] = self.quota_consistent()
        return out

    def subvolumes(self) -> list[tuple[str, int]]:
        """(path relative to root, id) of every subvolume under the storage root."""
        if self.is_subvolume(self.root):
            return list(btrfsutil.SubvolumeIterator(self.root))
        found = []
        for sub in ("templates", "instances"):
            found += self._subvolumes_below(self.root / sub)
        return sorted(found)

    def _subvolumes_below(self, path: Path) -> list[tuple[str, int]]:
        found = []
        if not path.is_dir():
            return found
        for entry in os.scandir(path):
            p = Path(entry.path)
            if not entry.is_dir(follow_symlinks=False):
                continue
            if self.is_subvolume(p):
                rel = str(p.relative_to(self.root))
                found.append((rel, btrfsutil.subvolume_id(p)))
                found += [(f"{rel}/{sub}", sid) for sub, sid in btrfsutil.SubvolumeIterator(p)]
            else:
                found += self._subvolumes_below(p)
        return found
