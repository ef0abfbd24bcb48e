"""Templates: build from a recipe into the storage pool, list, delete."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

from ctd.errors import Conflict, NotFound, OperationFailed
from ctd.state import StateDB, TemplateRecord
from ctd.storage.archive import drop_device_nodes
from ctd.storage.base import StorageDriver
from ctd.template import busybox, mmdebstrap
from ctd.template.mmdebstrap import BuildContext
from ctd.template.recipe import Recipe, get_recipe, load_recipes

Builder = Callable[[Recipe, Path, BuildContext], None]
BUILDERS: dict[str, Builder] = {"busybox": busybox.build, "mmdebstrap": mmdebstrap.build}


def guess_stop_signal(rootfs: Path) -> str:
    """The shutdown signal of the init a root carries: systemd, busybox, or sysvinit-like."""
    init = rootfs / "sbin/init"
    try:
        target = os.readlink(init) if init.is_symlink() else ""
    except OSError:
        target = ""
    if "systemd" in target:
        return "SIGRTMIN+3"
    if "busybox" in target:
        return "SIGUSR2"
    return "SIGPWR"


def guess_recipe(name: str, rootfs: Path) -> Recipe:
    """How to run a root that came without a recipe (an imported tarball, a Vagrant box): by
    its init. A systemd init gets a systemd guest (tmpfs /run, its cgroup subtree) and, when
    the root has systemd-networkd, networkd files for its NICs; anything else /sbin/init as is."""
    stop = guess_stop_signal(rootfs)
    systemd = stop == "SIGRTMIN+3"
    # host paths, as guess_stop_signal: what a planted symlink could change is only this choice
    networkd = systemd and any((rootfs / d / "systemd/systemd-networkd").exists() for d in ("lib", "usr/lib"))
    return Recipe(name=name, builder="none", init=["/sbin/init"], stop_signal=stop, systemd=systemd,
                  network_style="networkd" if networkd else "none")


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


class TemplateManager:
    def __init__(self, recipes_dir: Path, db: StateDB, storage: StorageDriver) -> None:
        self.recipes_dir = recipes_dir
        self.db = db
        self.storage = storage
        self.building: set[str] = set()

    def recipes(self) -> dict[str, Recipe]:
        return load_recipes(self.recipes_dir)

    def recipe(self, name: str) -> Recipe:
        return get_recipe(self.recipes_dir, name)

    def get(self, name: str) -> TemplateRecord:
        rec = self.db.get_template(name)
        if rec is None:
            hint = (f"build it with 'ctctl template build {name}'" if name in self.recipes()
                    else f"known recipes: {', '.join(sorted(self.recipes())) or 'none'}")
            raise NotFound(f"template {name!r} is not built; {hint}")
        return rec

    def build_blocking(self, name: str, ctx: BuildContext | None = None) -> TemplateRecord:
        """Runs in a worker thread; the caller records the result in the database."""
        ctx = ctx or BuildContext()
        recipe = self.recipe(name)
        builder = BUILDERS.get(recipe.builder)
        if builder is None:
            raise OperationFailed(f"template {name!r} needs builder {recipe.builder!r}, which this ctd lacks")
        staging = self.storage.new_template_dir(name)
        try:
            builder(recipe, staging / "rootfs", ctx)
            drop_device_nodes(staging / "rootfs")  # mmdebstrap makes dev/*; ctd makes /dev itself
            if self.storage.template_path(name).exists():
                self.storage.delete_template(name)  # a rebuild replaces the old one
            path = self.storage.commit_template(name, staging)
        except BaseException:
            self.storage.discard_template_staging(staging)
            raise
        return TemplateRecord(
            name=name, recipe=str(recipe.source), path=str(path), size=tree_size(path),
            built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            distro=recipe.distro, release=recipe.release, arch=platform.machine(),
        )

    def recipe_of(self, name: str) -> Recipe:
        """How to run instances of a built template: its recipe, the recipe it descends from
        (templates made from an instance), or what its root suggests (imported tarballs)."""
        recipes = self.recipes()
        if name in recipes:
            return recipes[name]
        rec = self.get(name)
        source = Path(rec.recipe) if rec.recipe.endswith(".toml") else None
        if source is not None and source.exists():
            base = load_recipes(source.parent).get(source.stem)
            if base is not None:
                return dataclasses.replace(base, name=name)
        return guess_recipe(name, Path(rec.path) / "rootfs")

    def from_instance_blocking(self, name: str, rootfs: Path, base: TemplateRecord | None) -> TemplateRecord:
        """A new template holding a copy of an (stopped) instance's root; runs in a thread."""
        if self.db.get_template(name) is not None or name in self.recipes():
            raise Conflict(f"a template named {name!r} exists already; choose another name")
        staging = self.storage.new_template_dir(name)
        try:
            result = subprocess.run(["cp", "-a", "--reflink=auto", "--", f"{rootfs}/.", str(staging / "rootfs")],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise OperationFailed(f"copying the instance's root failed: {result.stderr.strip()}")
            drop_device_nodes(staging / "rootfs")  # a (privileged) guest may have made some
            path = self.storage.commit_template(name, staging)
        except BaseException:
            self.storage.discard_template_staging(staging)
            raise
        return TemplateRecord(
            name=name, recipe=base.recipe if base else "", path=str(path), size=tree_size(path),
            built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            distro=base.distro if base else "", release=base.release if base else "",
            arch=platform.machine())

    def delete(self, name: str) -> None:
        self.get(name)
        users = self.db.template_in_use(name)
        if users:
            raise Conflict(f"template {name!r} is used by {', '.join(users)}; destroy those first")
        self.storage.delete_template(name)
        self.db.delete_template(name)
