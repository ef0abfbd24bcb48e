"""Template recipes: one small TOML file per template in templates/, data not code."""

from __future__ import annotations

import signal
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ctd.errors import InvalidRequest, NotFound


@dataclass(frozen=True)
class Recipe:
    name: str
    builder: str
    description: str = ""
    distro: str = ""
    release: str = ""
    init: list[str] = field(default_factory=lambda: ["/sbin/init"])
    stop_signal: str = "SIGTERM"
    files: str | None = None
    packages: list[str] = field(default_factory=list)
    variant: str = "minbase"      # mmdebstrap variant
    # How the guest keeps its network settings: "none" (ctd sets eth0 up from the host only),
    # "ip" (also /etc/ctd/network.sh with `ip` commands) or "networkd" (also systemd-networkd
    # files, so the guest's own tools agree).
    network_style: str = "none"
    # A systemd guest: /run, /run/lock, /tmp are tmpfs, cgroup filesystems are mounted inside
    # and its cgroup subtree belongs to it.
    systemd: bool = False
    source: Path | None = None  # the recipe file

    @property
    def files_dir(self) -> Path | None:
        if self.files is None or self.source is None:
            return None
        return self.source.parent / self.files


def _load(path: Path) -> Recipe:
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    try:
        recipe = Recipe(**raw, source=path)
    except TypeError as exc:
        raise InvalidRequest(f"template recipe {path}: {exc}") from exc
    if recipe.name != path.stem:
        raise InvalidRequest(f"template recipe {path}: name {recipe.name!r} must match the file name")
    try:
        check_stop_signal(recipe.stop_signal)
    except InvalidRequest as exc:
        raise InvalidRequest(f"template recipe {path}: {exc.message}") from None
    return recipe


def check_stop_signal(name: object) -> str:
    """A signal name an init can be stopped with ('SIGTERM', 'SIGRTMIN+3'); InvalidRequest else."""
    try:
        number = signal_number(name) if isinstance(name, str) else 0
    except (KeyError, ValueError, AttributeError):
        number = 0
    if not 0 < number <= signal.SIGRTMAX:
        raise InvalidRequest(f"unknown stop_signal {name!r}: use a signal name like SIGTERM or SIGRTMIN+3")
    return name  # type: ignore[return-value]


def load_recipes(directory: Path) -> dict[str, Recipe]:
    return {p.stem: _load(p) for p in sorted(directory.glob("*.toml"))}


def get_recipe(directory: Path, name: str) -> Recipe:
    recipes = load_recipes(directory)
    if name not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise NotFound(f"no template recipe named {name!r}; known recipes: {known}")
    return recipes[name]


def signal_number(name: str) -> int:
    """'SIGUSR2' or 'SIGRTMIN+3' to a number."""
    if name.startswith("SIGRTMIN"):
        offset = name[len("SIGRTMIN"):]
        return signal.SIGRTMIN + (int(offset) if offset else 0)
    return int(signal.Signals[name])
