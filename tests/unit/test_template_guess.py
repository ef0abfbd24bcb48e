"""How ctd runs a root without a recipe (an imported tarball, a Vagrant box's rootfs)."""

from __future__ import annotations

import os
from pathlib import Path

from ctd.template.manager import guess_recipe


def root(tmp_path: Path, init: str, networkd: bool) -> Path:
    r = tmp_path / "rootfs"
    (r / "usr/sbin").mkdir(parents=True)
    (r / "usr/lib/systemd").mkdir(parents=True)
    os.symlink("usr/sbin", r / "sbin")  # merged /usr, as Debian 12
    os.symlink("usr/lib", r / "lib")
    os.symlink(init, r / "usr/sbin/init")
    if networkd:
        (r / "usr/lib/systemd/systemd-networkd").write_text("")
    return r


def test_a_systemd_root_with_networkd_runs_as_a_systemd_guest(tmp_path: Path) -> None:
    recipe = guess_recipe("vagrant-box", root(tmp_path, "/lib/systemd/systemd", networkd=True))
    assert (recipe.systemd, recipe.network_style, recipe.stop_signal) == (True, "networkd", "SIGRTMIN+3")


def test_systemd_without_networkd_and_busybox(tmp_path: Path) -> None:
    recipe = guess_recipe("t", root(tmp_path, "/lib/systemd/systemd", networkd=False))
    assert (recipe.systemd, recipe.network_style) == (True, "none")
    recipe = guess_recipe("t", root(tmp_path / "b", "/bin/busybox", networkd=True))
    assert (recipe.systemd, recipe.network_style, recipe.stop_signal) == (False, "none", "SIGUSR2")
