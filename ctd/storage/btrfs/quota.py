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

Two accounting modes (QuotaMode). *Simple quotas* (kernel >= 6.7) charge each extent to the
subvolume that wrote it, for its lifetime: a snapshot starts at zero and counts only what it
writes, no backref walk at any commit, never inconsistent, so the 1000th create costs what
the first does. *Full qgroups* count every extent a subvolume can reach (the template's too)
and walk backrefs at every commit, which grows with the number of snapshots sharing extents.
Full qgroups are the default. Simple quotas are opt-in (ctd.toml quota_mode = "simple")
because they let a tenant exceed their limit: a rollback or restore makes the instance's
root from another subvolume and deletes the old one, and the data the old root wrote stays
charged to that (gone) subvolume, not to the instance; write to the limit, snapshot, roll
back, write again... fills the pool past --diskspace. (A per-instance level-1 qgroup holding
all the instance's subvolumes would close that; docs/storage.md.) Opted in, ctd turns simple
quotas on for a pool that holds nothing yet when the kernel has them (btrfs-progs 6.2
cannot: ensure_quota uses the BTRFS_IOC_QUOTA_CTL ioctl itself). A pool whose quota is on
keeps its mode either way (quota_mode_reason says which and why; a simple-quota pool under
the default setting logs the weakness and how to convert back).

QgroupQuota is a mixin of BtrfsStorage: it uses the driver's root, _lock and _sysfs.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import logging
import os
import struct
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
# _IOWR(BTRFS_IOCTL_MAGIC 0x94, 40, struct btrfs_ioctl_quota_ctl_args { __u64 cmd, status; })
BTRFS_IOC_QUOTA_CTL = (3 << 30) | (16 << 16) | (0x94 << 8) | 40
BTRFS_QUOTA_CTL_ENABLE = 1
BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA = 4
# Present when the running kernel can do simple quotas (Linux 6.7 and later)
SIMPLE_QUOTA_FEATURE = Path("/sys/fs/btrfs/features/simple_quota")
CONVERT_HINT = "docs/storage.md, 'Converting a pool to simple quotas'"
CONVERT_BACK_HINT = "docs/storage.md, 'Back to full qgroups'"


class QuotaMode(enum.Enum):
    """How btrfs accounts a pool's qgroups (sysfs qgroups/mode says "squota" or "qgroup")."""

    SIMPLE = "simple"
    FULL = "full"


def kernel_has_simple_quota() -> bool:
    return SIMPLE_QUOTA_FEATURE.exists()


def quota_ctl(path: Path, cmd: int) -> None:
    """BTRFS_IOC_QUOTA_CTL on the filesystem holding path (needs CAP_SYS_ADMIN)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_QUOTA_CTL, bytearray(struct.pack("<QQ", cmd, 0)), True)
    finally:
        os.close(fd)


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
    # Why the pool has the mode it has (set by ensure_quota / prepare; `ctctl storage` shows it)
    quota_mode_reason: str = ""
    _mode_logged: bool = False
    # The mode a pool whose quota is off gets (BtrfsStorage's quota_mode, from ctd.toml)
    quota_mode_wanted: QuotaMode = QuotaMode.FULL

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

    def quota_mode(self) -> QuotaMode | None:
        """The pool's accounting mode; None when quota is off. Kernels before 6.7 have no
        qgroups/mode file: full qgroups is all they can do."""
        sysfs = self._sysfs_dir()
        if sysfs is None:
            return QuotaMode.FULL if self.quota_enabled() else None
        if not (sysfs / "qgroups").is_dir():
            return None
        try:
            mode = (sysfs / "qgroups" / "mode").read_text().strip()
        except FileNotFoundError:
            return QuotaMode.FULL
        return QuotaMode.SIMPLE if mode == "squota" else QuotaMode.FULL

    def ensure_quota(self, *, simple: bool = False) -> None:
        """Turn btrfs quota on for the filesystem once. simple: with simple quotas when the
        kernel has them (only right on a pool holding no data yet: extents written before
        simple quotas are on are charged to no one); else full qgroups, and wait for their
        first rescan (instant on a new pool; proportional to the data on a filesystem that
        already holds some). A pool whose quota is on keeps its mode."""
        with self._lock:
            mode = self.quota_mode()
            if mode is not None:
                self._explain_mode(mode, enabled_now=False)
                return
            if simple and kernel_has_simple_quota():
                log.info("enabling btrfs simple quotas on %s", self.root)
                try:
                    quota_ctl(self.root, BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA)
                except OSError as exc:
                    log.warning("enabling btrfs simple quotas on %s failed (%s): using full qgroup "
                                "accounting", self.root, exc)
                else:
                    self._explain_mode(QuotaMode.SIMPLE, enabled_now=True)
                    return
            elif simple:
                log.warning("this kernel (%s) has no btrfs simple quotas (Linux 6.7 and later have "
                            "them): using full qgroup accounting on %s; creates with --diskspace "
                            "slow down as instances pile up", os.uname().release, self.root)
            log.info("enabling btrfs quota (full qgroups) on %s", self.root)
            run_btrfs("quota", "enable", str(self.root))
            run_btrfs("quota", "rescan", "-w", str(self.root), check=False)
            self._explain_mode(QuotaMode.FULL, enabled_now=True, simple_wanted=simple)

    def _explain_mode(self, mode: QuotaMode, *, enabled_now: bool, simple_wanted: bool = False) -> None:
        opted_in = self.quota_mode_wanted is QuotaMode.SIMPLE
        if mode is QuotaMode.SIMPLE and opted_in:
            self.quota_mode_reason = "simple quotas: opted in (quota_mode); each instance counts the data it wrote"
        elif mode is QuotaMode.SIMPLE:
            self.quota_mode_reason = ("simple quotas: quota was on before (quota_mode is full); a tenant who "
                                      "can roll back or restore can exceed their limit")
            if not self._mode_logged:
                log.warning("btrfs quota on %s uses simple quotas though quota_mode is full: a tenant who "
                            "may roll back or restore can write past their --diskspace; to go back to "
                            "full qgroups see %s", self.root, CONVERT_BACK_HINT)
        elif enabled_now and simple_wanted:
            self.quota_mode_reason = ("full qgroups: this kernel has no simple quotas (Linux 6.7)"
                                      if not kernel_has_simple_quota() else
                                      "full qgroups: enabling simple quotas failed (see the log)")
        elif not opted_in:
            self.quota_mode_reason = "full qgroups: the default (quota_mode)"
        elif enabled_now:
            self.quota_mode_reason = "full qgroups: the filesystem held data when quota was turned on"
        else:
            self.quota_mode_reason = "full qgroups: quota was on before"
            if kernel_has_simple_quota() and not self._mode_logged:
                log.warning("btrfs quota on %s uses full qgroup accounting (turned on by an older "
                            "ctd or by hand) though quota_mode is simple; to convert see %s",
                            self.root, CONVERT_HINT)
        self._mode_logged = True

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
        if self.quota_consistent() is not False or self.quota_mode() is QuotaMode.SIMPLE:
            return False  # (simple quotas are never inconsistent and cannot be rescanned)
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
