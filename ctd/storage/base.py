"""The storage driver interface: where templates and instance roots live.

Layout under root (every driver):

    templates/NAME/rootfs            a template's root (btrfs: a read-only subvolume)
    instances/NAME/rootfs            an instance's writable root (btrfs: a writable snapshot)
    instances/NAME/snapshots/SNAP    snapshots of that root (btrfs: read-only snapshots)
    instances/NAME/.rootfs-new|old   only while a rollback swaps roots (see recover_partial)

The snapshot/rollback/clone defaults below copy trees (`cp -a --reflink=auto`); a driver with
cheap copies overrides the two hooks `_copy_root` and `_remove_root` (btrfs: snapshots).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from ctd import faults
from ctd.errors import Conflict, InvalidRequest, NotFound, NotSupported, OperationFailed
from ctd.storage import loopdio


@dataclass(frozen=True)
class StorageInfo:
    driver: str
    path: str
    usable: bool
    reason: str = ""


SNAPSHOTS = "snapshots"
NEW_ROOT = ".rootfs-new"
OLD_ROOT = ".rootfs-old"


def check_component(kind: str, value: str) -> str:
    """Names become one path component; callers validate them, this refuses the dangerous."""
    if (not isinstance(value, str) or not value or value in (".", "..") or "/" in value
            or "\0" in value or value.startswith(".")):
        raise InvalidRequest(f"invalid {kind} name {value!r}: it must be one path component "
                             "without '/' and must not start with '.'")
    return value


def copy_tree(source: Path, target: Path) -> None:
    """cp -a keeps owners, modes, xattrs, hard links and device nodes; reflink is free on
    btrfs/xfs and falls back to a copy elsewhere. A failure leaves no target behind."""
    result = subprocess.run(["cp", "-a", "--reflink=auto", "--", str(source), str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise OperationFailed(f"copying {source} to {target} failed: {result.stderr.strip()}")


def unique_suffix() -> str:
    return uuid.uuid4().hex[:8]


FICLONE = 0x40049409   # linux/fs.h: _IOW(0x94, 9, int)
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_NOCOW_FL = 0x80086601, 0x40086602, 0x00800000


def _same_nocow(src: int, dst: int) -> None:
    """btrfs clones only between files of the same nodatacow flag: a VM disk is +C (rootdisk.py),
    so its new, still empty copy gets +C too (else FICLONE fails and cp copies every byte)."""
    buf = bytearray(8)
    try:
        fcntl.ioctl(src, FS_IOC_GETFLAGS, buf)
        if int.from_bytes(buf[:4], "little") & FS_NOCOW_FL:
            fcntl.ioctl(dst, FS_IOC_GETFLAGS, buf)
            flags = int.from_bytes(buf[:4], "little") | FS_NOCOW_FL
            fcntl.ioctl(dst, FS_IOC_SETFLAGS, flags.to_bytes(4, "little") + bytes(4))
    except OSError:   # no such flags here (tmpfs): nothing to match
        pass


def _reflink(source: Path, target: Path) -> None:
    """target (new) a copy of source: one FICLONE ioctl where the filesystem shares extents
    (btrfs, XFS: no fork, milliseconds; a live VM snapshot pauses the guest for it), else cp."""
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise OperationFailed(f"copying {source.name} failed: {target} exists") from None
    try:
        with open(source, "rb") as src:
            _same_nocow(src.fileno(), dst)
            fcntl.ioctl(dst, FICLONE, src.fileno())
        return
    except OSError:   # no shared extents here (ext4, another filesystem): cp copies
        target.unlink(missing_ok=True)
    finally:
        os.close(dst)
    result = subprocess.run(["cp", "--reflink=auto", "--sparse=always", "--", str(source), str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise OperationFailed(f"copying {source.name} failed: {result.stderr.strip()}")


def tree_usage(path: Path) -> int:
    """Bytes allocated by the files under path (st_blocks, hard links once, like `du -s`)."""
    total, seen = 0, set()
    for dirpath, _dirnames, filenames in os.walk(path):
        for entry in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            try:
                st = os.lstat(entry)
            except FileNotFoundError:
                continue
            if st.st_nlink > 1 and not os.path.isdir(entry):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
    return total


class PoolInfo(TypedDict, total=False):
    """What pool_info() reports (the API's GET /1.0/storage): bytes of the filesystem holding
    the storage root; image and device only for ctd's loop-backed pool; quota_consistent
    only on btrfs with quota on."""

    driver: str
    path: str
    size: int
    used: int
    free: int
    quota: bool
    quota_consistent: bool | None
    quota_mode: str  # "simple" or "full" (btrfs with quota on only)
    quota_mode_reason: str
    image: str
    device: str
    reason: str
    direct_io: bool
    direct_io_reason: str


def vm_disk_files(directory: Path) -> list[str]:
    """A VM's disk files in directory (its own, or a snapshot's): disk.raw, then its data disks
    (data-NAME.raw, vm/datadisks.py) by name."""
    data = sorted(p.name for p in directory.glob("data-*.raw") if p.is_file() and not p.is_symlink())
    return ["disk.raw", *data]


class StorageDriver(ABC):
    name: str

    def __init__(self, root: Path) -> None:
        self.root = root
        # Set by ctd.storage.pool when the driver runs on ctd's own loop-backed pool.
        self.image: Path | None = None
        self.device: str | None = None
        # Direct I/O on that pool's loop device (None: no loop of ctd's), and why it is off.
        self.direct_io: bool | None = None
        self.direct_io_reason: str = ""
        # Why this driver was chosen (pool.choose_storage fills it; shown by `ctctl storage`).
        self.reason: str = ""

    def template_path(self, template: str) -> Path:
        return self.root / "templates" / template

    def instance_path(self, name: str) -> Path:
        return self.root / "instances" / name

    def rootfs(self, name: str) -> Path:
        return self.instance_path(name) / "rootfs"

    def snapshot_path(self, name: str, snapshot: str) -> Path:
        return self.instance_path(name) / SNAPSHOTS / snapshot

    def prepare(self) -> None:
        # Instance roots hold files owned by real host ids (the idmapped mount keeps disk ids),
        # setuid ones included: no host user but root may ever walk into them.
        for sub in ("templates", "instances"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for path in (self.root, self.root / "templates", self.root / "instances"):
            path.chmod(0o700)

    @abstractmethod
    def info(self) -> StorageInfo: ...

    @abstractmethod
    def create_instance(self, name: str, template: str) -> Path:
        """A new writable root for instance name from template; returns its rootfs path."""

    @abstractmethod
    def delete_instance(self, name: str) -> None:
        """Remove everything of name; a missing instance is not an error."""

    @abstractmethod
    def new_template_dir(self, template: str) -> Path:
        """An empty staging directory to build template into (see commit_template)."""

    @abstractmethod
    def commit_template(self, template: str, staging: Path) -> Path:
        """Make staging the template (atomically replacing nothing: the name must be free)."""

    @abstractmethod
    def delete_template(self, template: str) -> None: ...

    @abstractmethod
    def discard_staging(self) -> list[str]:
        """After a crash: half-built templates (and what else the driver leaves half done);
        returns what was removed or repaired."""

    def instance_names(self) -> list[str]:
        base = self.root / "instances"
        return sorted(p.name for p in base.iterdir()) if base.exists() else []

    # -- copies of roots: the two hooks a driver with cheap copies overrides ------------------

    def _copy_root(self, source: Path, target: Path, *, read_only: bool) -> None:
        """Make target a copy of the root at source (target's parent exists, target not)."""
        copy_tree(source, target)

    def snapshot_vm_disk(self, name: str, snapshot: str) -> None:
        """A VM's disks (stopped or paused VM) copied into snapshots/SNAP: the root disk and its
        data disks (data-*.raw), reflinks, free on btrfs."""
        check_component("snapshot", snapshot)
        base = self.instance_path(name)
        target = self.snapshot_path(name, snapshot)
        if target.exists():
            raise Conflict(f"instance {name!r} already has a snapshot {snapshot!r}")
        target.parent.mkdir(mode=0o700, exist_ok=True)
        staging = target.parent / f".new-{snapshot}-{unique_suffix()}"
        staging.mkdir(mode=0o700)
        try:
            for file in vm_disk_files(base):
                _reflink(base / file, staging / file)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def rollback_vm_disk(self, name: str, snapshot: str) -> None:
        """Each disk the snapshot holds back in place (one atomic rename each); a data disk
        added since the snapshot is left as it is."""
        check_component("snapshot", snapshot)
        source = self.snapshot_path(name, snapshot)
        if not (source / "disk.raw").exists():
            raise NotFound(f"instance {name!r} has no snapshot {snapshot!r}")
        base = self.instance_path(name)
        for file in vm_disk_files(source):
            temp = base / f".disk-{unique_suffix()}.raw"
            try:
                _reflink(source / file, temp)
                temp.rename(base / file)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise

    def clone_vm_dir(self, source: str, name: str, from_snapshot: str | None = None) -> Path:
        """A new VM directory: a reflink of source's disk (or of its snapshot's), its UEFI variables
        and TPM state copied; no snapshots, no seed (the clone's own is built). Stopped source."""
        check_component("instance", name)
        base = self.instance_path(source)
        disk = base / "disk.raw"
        if from_snapshot is not None:
            check_component("snapshot", from_snapshot)
            disk = self.snapshot_path(source, from_snapshot) / "disk.raw"
        if not disk.exists():
            raise NotFound(f"instance {source!r} has no disk" + (f" in snapshot {from_snapshot!r}"
                                                                 if from_snapshot else ""))
        target = self.instance_path(name)
        try:
            target.mkdir(mode=0o700)
        except FileExistsError:
            raise Conflict(f"storage for instance {name!r} already exists") from None
        try:
            _reflink(disk, target / "disk.raw")
            for file in vm_disk_files(disk.parent)[1:]:   # the data disks of the same instant
                _reflink(disk.parent / file, target / file)
            if (base / "OVMF_VARS.fd").exists():
                _reflink(base / "OVMF_VARS.fd", target / "OVMF_VARS.fd")
            if (base / "tpm").is_dir():
                copy_tree(base / "tpm", target / "tpm")
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return target

    def new_vm_dir(self, name: str) -> Path:
        """The directory of a VM's disk, NVRAM and TPM state (no root filesystem)."""
        check_component("instance", name)
        path = self.instance_path(name)
        path.mkdir(mode=0o700)
        return path

    def drop_root(self, name: str) -> None:
        """Remove name's root filesystem but keep its directory (a VM made its disk from it)."""
        self._remove_root(self.rootfs(name))

    def discard_template_staging(self, staging: Path) -> None:
        """A template build that failed: its staging dir (with any subvolume in it) goes."""
        if staging.exists():
            self._remove_root(staging)

    def _remove_root(self, path: Path) -> None:
        """Remove a root made by _copy_root or create_instance; missing is fine."""
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise OperationFailed(f"could not remove {path}")

    def _carry_over(self, old_root: Path, new_root: Path) -> None:
        """Give a root that replaces another (rollback) what belongs to the instance, not to
        the tree: the btrfs driver carries the disk limit over."""
        return  # a plain directory has nothing of the kind

    def _existing_rootfs(self, name: str) -> Path:
        check_component("instance", name)
        rootfs = self.rootfs(name)
        if not rootfs.is_dir():
            raise NotFound(f"instance {name!r} has no root in storage")
        return rootfs

    # -- snapshots, rollback, clone --------------------------------------------------------------

    def snapshot_instance(self, name: str, snapshot: str) -> Path:
        """A read-only (btrfs) point-in-time copy of name's root; returns its path.
        Take it while the instance is stopped (or frozen) for a consistent copy."""
        rootfs = self._existing_rootfs(name)
        check_component("snapshot", snapshot)
        target = self.snapshot_path(name, snapshot)
        if target.exists():
            raise Conflict(f"instance {name!r} already has a snapshot {snapshot!r}")
        target.parent.mkdir(mode=0o700, exist_ok=True)
        staging = target.parent / f".new-{snapshot}-{unique_suffix()}"  # never seen half-made
        self._copy_root(rootfs, staging, read_only=True)
        faults.point("storage.snapshot.staged")
        try:
            staging.rename(target)
        except BaseException:
            self._remove_root(staging)
            raise
        return target

    def list_snapshots(self, name: str) -> list[str]:
        """Snapshot names of instance name (a container's roots or a VM's disks), sorted."""
        check_component("instance", name)
        if not self.instance_path(name).is_dir():
            raise NotFound(f"instance {name!r} has nothing in storage")
        base = self.instance_path(name) / SNAPSHOTS
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if not p.name.startswith("."))

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        check_component("instance", name)
        check_component("snapshot", snapshot)
        path = self.snapshot_path(name, snapshot)
        if not path.exists():
            raise NotFound(f"instance {name!r} has no snapshot {snapshot!r}")
        self._remove_root(path)

    def rollback(self, name: str, snapshot: str) -> None:
        """Replace name's root by a writable copy of snapshot (the snapshot stays). The
        instance must be stopped."""
        self._existing_rootfs(name)
        check_component("snapshot", snapshot)
        source = self.snapshot_path(name, snapshot)
        if not source.exists():
            raise NotFound(f"instance {name!r} has no snapshot {snapshot!r}")
        self._swap_root(name, source)

    def reinstall_root(self, name: str, template: str) -> Path:
        """Replace name's root by a fresh copy of template's (OpenVZ's reinstall)."""
        self._existing_rootfs(name)
        check_component("template", template)
        source = self.template_path(template) / "rootfs"
        if not source.is_dir():
            raise NotFound(f"template {template!r} is not built")
        return self._swap_root(name, source)

    def _swap_root(self, name: str, source: Path) -> Path:
        """Make a writable copy of source aside, then swap it in by two renames: a failure
        before the swap keeps the old root; recover_partial() finishes a swap a crash cut."""
        rootfs = self.rootfs(name)
        self.recover_partial(name)
        base = self.instance_path(name)
        new, old = base / NEW_ROOT, base / OLD_ROOT
        self._copy_root(source, new, read_only=False)
        try:
            self._carry_over(rootfs, new)
            rootfs.rename(old)
        except BaseException:
            self._remove_root(new)
            raise
        faults.point("storage.rollback.between_renames")
        new.rename(rootfs)
        self._remove_root(old)
        return rootfs

    def clone_instance(self, source: str, name: str, from_snapshot: str | None = None) -> Path:
        """A new instance name whose root is a writable copy of source's root (or of its
        snapshot from_snapshot); snapshots are not carried over. Returns the new rootfs."""
        origin = self._existing_rootfs(source)
        if from_snapshot is not None:
            check_component("snapshot", from_snapshot)
            origin = self.snapshot_path(source, from_snapshot)
            if not origin.exists():
                raise NotFound(f"instance {source!r} has no snapshot {from_snapshot!r}")
        check_component("instance", name)
        target = self.instance_path(name)
        try:
            target.mkdir(mode=0o700)
        except FileExistsError:
            raise Conflict(f"storage for instance {name!r} already exists") from None
        faults.point("storage.clone.after_mkdir")
        try:
            self._copy_root(origin, target / "rootfs", read_only=False)
        except BaseException:
            self.delete_instance(name)
            raise
        return target / "rootfs"

    def recover_partial(self, name: str | None = None) -> list[str]:
        """Finish or undo rollbacks a crash interrupted (for name, or every instance);
        returns what was repaired. Safe to call at any time nothing else touches name."""
        names = [name] if name is not None else self.instance_names()
        repaired = []
        for n in names:
            base = self.instance_path(n)
            rootfs, new, old = base / "rootfs", base / NEW_ROOT, base / OLD_ROOT
            if not rootfs.exists() and new.exists():
                new.rename(rootfs)  # crashed between the two renames: the new root is complete
                repaired.append(f"{n}: rollback completed")
            elif not rootfs.exists() and old.exists():
                old.rename(rootfs)
                repaired.append(f"{n}: rollback undone")
            for leftover in (new, old):
                if leftover.exists():
                    self._remove_root(leftover)
                    repaired.append(f"{n}: removed {leftover.name}")
            snaps = base / SNAPSHOTS
            if snaps.is_dir():
                for tmp in snaps.glob(".*"):
                    self._remove_root(tmp)
                    repaired.append(f"{n}: removed {SNAPSHOTS}/{tmp.name}")
        return repaired

    # -- disk space ------------------------------------------------------------------------------

    def set_quota(self, name: str, limit: int | None) -> None:
        """Limit the bytes name's root may hold (None: no limit)."""
        self._existing_rootfs(name)
        if limit is None:
            return  # there is no limit to lift
        raise NotSupported(
            f"the {self.name} storage driver cannot limit disk space; disk quotas need the btrfs "
            "driver (put the state directory's storage on btrfs, or install btrfs-progs so ctd "
            "makes its own btrfs pool)")

    def quota(self, name: str) -> int | None:
        """The limit set by set_quota, None when there is none."""
        self._existing_rootfs(name)
        return None

    def usage(self, name: str, fresh: bool = False) -> int:
        """Bytes name's root holds (btrfs: qgroup referenced bytes; here: a du-like walk)."""
        return tree_usage(self._existing_rootfs(name))

    def usage_is_cheap(self) -> bool:
        """Whether usage() and quota() read a few small files (may run on the event loop), not
        walk a tree or run a program (a thread's work)."""
        return False

    def pool_info(self) -> PoolInfo:
        """driver, path, size, used, free (bytes, of the filesystem holding root); image and
        device when the pool is ctd's loop-backed image, and direct_io (whether its loop device reads
        the image with O_DIRECT; direct_io_reason when not); reason why this driver was chosen."""
        st = os.statvfs(self.root)
        out: PoolInfo = {
            "driver": self.name, "path": str(self.root),
            "size": st.f_blocks * st.f_frsize,
            "used": (st.f_blocks - st.f_bfree) * st.f_frsize,
            "free": st.f_bavail * st.f_frsize,
            "quota": False,
        }
        if self.image is not None:
            out["image"] = str(self.image)
        if self.device is not None:
            out["device"] = self.device
        if self.direct_io is not None and self.device is not None:
            live = loopdio.is_on(self.device)  # the kernel's word now, not only at start-up
            out["direct_io"] = self.direct_io if live is None else live
            if not out["direct_io"]:
                out["direct_io_reason"] = self.direct_io_reason or (
                    "switched off since ctd started; ctd switches it on again at its next start")
        if self.reason:
            out["reason"] = self.reason
        return out

