"""The dir driver: plain directories, reflink copies where the filesystem has them, no quota."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from ctd.errors import OperationFailed
from ctd.storage.base import StorageDriver, StorageInfo


class DirStorage(StorageDriver):
    name = "dir"

    def info(self) -> StorageInfo:
        return StorageInfo("dir", str(self.root), True)

    def create_instance(self, name: str, template: str) -> Path:
        target = self.instance_path(name)
        target.mkdir(mode=0o700)
        try:
            rootfs = target / "rootfs"
            # cp keeps owners, modes, xattrs, hard links and device nodes; reflink is free on
            # btrfs/xfs and falls back to a copy elsewhere.
            result = subprocess.run(
                ["cp", "-a", "--reflink=auto", str(self.template_path(template) / "rootfs"), str(rootfs)],
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise OperationFailed(f"copying template {template!r} failed: {result.stderr.strip()}")
            return rootfs
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def delete_instance(self, name: str) -> None:
        shutil.rmtree(self.instance_path(name), ignore_errors=True)

    def new_template_dir(self, template: str) -> Path:
        staging = self.root / "templates" / f".build-{template}-{uuid.uuid4().hex[:8]}"
        (staging / "rootfs").mkdir(parents=True)
        return staging

    def commit_template(self, template: str, staging: Path) -> Path:
        final = self.template_path(template)
        staging.rename(final)
        return final

    def delete_template(self, template: str) -> None:
        shutil.rmtree(self.template_path(template), ignore_errors=True)

    def discard_staging(self) -> list[str]:
        """Half-built templates from a crash; returns what was removed."""
        removed = []
        for path in (self.root / "templates").glob(".build-*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed
