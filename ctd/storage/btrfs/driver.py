"""BtrfsStorage: templates are read-only subvolumes, instance roots writable snapshots.

    templates/NAME/rootfs            read-only subvolume (built in a staging dir's fresh subvolume)
    instances/NAME/rootfs            writable snapshot of the template's rootfs: create copies nothing
    instances/NAME/snapshots/SNAP    read-only snapshots of rootfs
    instances/NAME/.rootfs-new|old   only while a rollback swaps roots

Subvolumes are made, listed and deleted with libbtrfsutil (lib.btrfsutil); a root made by
another driver (a plain directory) is copied, reflinked, into a fresh subvolume. Quota (qgroup
limits, usage, cleanup of deleted subvolumes' qgroups; simple quotas or full qgroups) comes
from quota.QgroupQuota.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

from ctd import faults
from ctd.errors import Conflict, InvalidRequest, NotFound, OperationFailed
from ctd.storage.base import (
    NEW_ROOT,
    OLD_ROOT,
    SNAPSHOTS,
    PoolInfo,
    StorageDriver,
    StorageInfo,
    check_component,
    tree_usage,
    unique_suffix,
)
from ctd.storage.btrfs.lib import IMPORT_ERROR, btrfsutil, errors, is_btrfs
from ctd.storage.btrfs.quota import QgroupQuota, QuotaMode


class BtrfsStorage(QgroupQuota, StorageDriver):
    """The StorageDriver on btrfs (see the module doc); its quota methods are QgroupQuota's."""

    name = "btrfs"

    def __init__(self, root: Path, *, enable_quota: bool = False,
                 quota_mode: QuotaMode = QuotaMode.FULL) -> None:
        """enable_quota: turn btrfs quota on in prepare() (ctd's own pool does; on a shared
        filesystem it is turned on by the first set_quota, since qgroups cost the whole
        filesystem a rescan and some bookkeeping on every snapshot delete). quota_mode: the
        accounting a pool whose quota is off gets (ctd.toml quota_mode): full qgroups unless
        the administrator opts in to simple quotas (quota.py says what that costs)."""
        super().__init__(root)
        self.enable_quota = enable_quota
        self.quota_mode_wanted = quota_mode
        self._lock = threading.RLock()
        self._sysfs: Path | None = None

    # -- probing -----------------------------------------------------------------------------

    def info(self) -> StorageInfo:
        if btrfsutil is None:
            return StorageInfo("btrfs", str(self.root), False,
                               f"the btrfsutil Python module is missing ({IMPORT_ERROR}); "
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
            # Simple quotas only on a pool that holds nothing yet: what was written before they
            # are on is charged to no one, so an older pool's instances would look empty.
            self.ensure_quota(simple=self.quota_mode_wanted is QuotaMode.SIMPLE and self._holds_nothing())
            self.own_quota_accounting()

    def _holds_nothing(self) -> bool:
        return not any(any((self.root / sub).iterdir()) for sub in ("templates", "instances")
                       if (self.root / sub).is_dir())


    # -- subvolume primitives ----------------------------------------------------------------

    @staticmethod
    def is_subvolume(path: Path) -> bool:
        try:
            return bool(btrfsutil.is_subvolume(path))
        except btrfsutil.BtrfsUtilError:
            return False

    def subvolume_ids(self, path: Path) -> list[int]:
        """IDs of the subvolume at path and of every subvolume nested in it."""
        ids = [btrfsutil.subvolume_id(path)]
        ids += [sid for _, sid in btrfsutil.SubvolumeIterator(path)]
        return ids

    def _copy_root(self, source: Path, target: Path, *, read_only: bool) -> None:
        with errors(f"snapshotting {source} to {target}"):
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
            with errors(f"deleting subvolume {path}"):
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
            with errors(f"creating subvolume {staging / 'rootfs'}"):
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
        with errors(f"making {rootfs} read-only"):
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
        """Referenced bytes of name's root: with full qgroups all it can see (template data it
        shares included), with simple quotas what it wrote; with quota off, a du-like walk of
        the tree. fresh: commit the filesystem first (costly with many
        subvolumes: only where a decision depends on it)."""
        rootfs = self._existing_rootfs(name)
        if self.quota_enabled():
            q = self.subvolume_usage(rootfs, sync=fresh)
            if q is not None:
                return q["referenced"]
        return tree_usage(rootfs)

    def usage_is_cheap(self) -> bool:
        """With qgroups read from sysfs: a few small files; else a walk of the tree or `btrfs`."""
        return self._sysfs_dir() is not None and self.quota_enabled()

    def pool_info(self) -> PoolInfo:
        out = super().pool_info()
        mode = self.quota_mode()
        out["quota"] = mode is not None
        if mode is not None:
            out["quota_consistent"] = self.quota_consistent()
            out["quota_mode"] = mode.value
            if not self.quota_mode_reason:
                self._explain_mode(mode, enabled_now=False)
            out["quota_mode_reason"] = self.quota_mode_reason
        return out

    def subvolumes(self) -> list[tuple[str, int]]:
        """(path relative to root, id) of every subvolume under the storage root."""
        if self.is_subvolume(self.root):
            return list(btrfsutil.SubvolumeIterator(self.root))
        found: list[tuple[str, int]] = []
        for sub in ("templates", "instances"):
            found += self._subvolumes_below(self.root / sub)
        return sorted(found)

    def _subvolumes_below(self, path: Path) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
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
