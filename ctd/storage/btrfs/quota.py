"""btrfs qgroup quota for the btrfs driver: turning quota on, limits on an instance root's
qgroup, usage figures, and cleaning up the qgroups of deleted subvolumes.

libbtrfsutil has no qgroup calls, so quota goes through the `btrfs` command (`quota enable`,
`qgroup limit`, `qgroup destroy`); usage and limits are read from
/sys/fs/btrfs/<fsid>/qgroups/0_<id>/ when the kernel has it, else from `btrfs qgroup show
--raw`. Limits are on *referenced* bytes: all the data an instance's root can see, template
blocks shared with other instances included. The qgroups of deleted subvolumes are destroyed
once the kernel's cleaner is done with them (PENDING_QGROUPS in the storage root remembers
them across restarts). While the kernel marks qgroup numbers inconsistent no limit holds, so
whatever sets a limit waits for a rescan.

QgroupQuota is a mixin of BtrfsStorage: it uses the driver's root, _lock and _sysfs.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from pathlib import Path
from typing import TypedDict

from ctd.errors import OperationFailed
from ctd.storage.btrfs.lib import btrfsutil, fs_uuid, run_btrfs

log = logging.getLogger(__name__)

QGROUP_LIMIT_MAX_RFER = 1
# BTRFS_MAX_LEVEL: trace every dropped subtree, however tall (see own_quota_accounting)
FULL_DROP_TRACING = 8
PENDING_QGROUPS = ".qgroups-pending.json"


class QgroupNumbers(TypedDict):
    """One qgroup's figures in bytes; limit is its max_referenced, None without one."""

    referenced: int
    exclusive: int
    limit: int | None


class QgroupQuota:
    """Quota methods of the btrfs driver (see the module doc)."""

    root: Path
    _lock: threading.RLock
    _sysfs: Path | None

    def _sysfs_dir(self) -> Path | None:
        if self._sysfs is None:
            try:
                path = Path("/sys/fs/btrfs") / fs_uuid(self.root)
            except OSError:
                return None
            if path.is_dir():
                self._sysfs = path
        return self._sysfs


    def quota_enabled(self) -> bool:
        sysfs = self._sysfs_dir()
        if sysfs is not None:
            return (sysfs / "qgroups").is_dir()
        return run_btrfs("qgroup", "show", str(self.root), check=False).returncode == 0

    def ensure_quota(self) -> None:
        """Turn btrfs quota on for the filesystem once, and wait for its first rescan (instant
        on a new pool; proportional to the data on a filesystem that already holds some)."""
        with self._lock:
            if self.quota_enabled():
                return
            log.info("enabling btrfs quota on %s", self.root)
            run_btrfs("quota", "enable", str(self.root))
            run_btrfs("quota", "rescan", "-w", str(self.root), check=False)

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
        run_btrfs("quota", "rescan", str(self.root), check=False)
        if wait:
            run_btrfs("quota", "rescan", "-W", str(self.root), check=False)
        return True

    def _qgroup(self, subvol_id: int) -> QgroupNumbers | None:
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
        result = run_btrfs("qgroup", "show", "--raw", "-r", str(self.root), check=False)
        for line in result.stdout.splitlines():
            fields = line.split()
            if fields and fields[0] == f"0/{subvol_id}" and len(fields) >= 4:
                return {"referenced": int(fields[1]), "exclusive": int(fields[2]),
                        "limit": None if fields[3] == "none" else int(fields[3])}
        return None

    def subvolume_usage(self, path: Path, *, sync: bool = True) -> QgroupNumbers | None:
        """Qgroup figures of the subvolume at path (see _qgroup); sync first for fresh ones."""
        if sync:
            btrfsutil.sync(self.root)
        return self._qgroup(btrfsutil.subvolume_id(path))

    def _limit_of(self, root: Path) -> int | None:
        q = self._qgroup(btrfsutil.subvolume_id(root))
        return q["limit"] if q else None

    def _set_limit(self, root: Path, limit: int | None) -> None:
        subvol_id = btrfsutil.subvolume_id(root)
        run_btrfs("qgroup", "limit", "none" if limit is None else str(limit),
                  f"0/{subvol_id}", str(self.root))


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
                result = run_btrfs("qgroup", "destroy", f"0/{sid}", str(self.root), check=False)
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
