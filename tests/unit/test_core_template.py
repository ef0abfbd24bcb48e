"""Template recipes (TOML data) and the busybox builder's ELF check."""
from __future__ import annotations

import re
import signal
import struct
from pathlib import Path

import pytest

from ctd.errors import InvalidRequest, NotFound
from ctd.template import busybox
from ctd.template.manager import BUILDERS
from ctd.template.recipe import Recipe, get_recipe, load_recipes, signal_number

REPO = Path(__file__).resolve().parents[2]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


GOOD = 'name = "{name}"\nbuilder = "busybox"\ndescription = "d"\nstop_signal = "{sig}"\n'


def test_load_recipes(tmp_path: Path) -> None:
    write(tmp_path, "alpha", GOOD.format(name="alpha", sig="SIGUSR2") + 'files = "alpha"\ninit = ["/bin/x", "-y"]\n')
    write(tmp_path, "beta", GOOD.format(name="beta", sig="SIGRTMIN+3"))
    (tmp_path / "notes.txt").write_text("not a recipe")
    recipes = load_recipes(tmp_path)
    assert list(recipes) == ["alpha", "beta"]
    alpha = recipes["alpha"]
    assert isinstance(alpha, Recipe)
    assert (alpha.builder, alpha.stop_signal, alpha.init) == ("busybox", "SIGUSR2", ["/bin/x", "-y"])
    assert alpha.source == tmp_path / "alpha.toml" and alpha.files_dir == tmp_path / "alpha"
    assert recipes["beta"].files_dir is None and recipes["beta"].init == ["/sbin/init"]
    assert load_recipes(tmp_path / "empty-does-not-exist") == {}


def test_name_must_match_the_file(tmp_path: Path) -> None:
    write(tmp_path, "alpha", GOOD.format(name="other", sig="SIGTERM"))
    with pytest.raises(InvalidRequest, match="name 'other' must match the file name"):
        load_recipes(tmp_path)


@pytest.mark.parametrize("sig", ["SIGFOO", "sigterm", "TERM", "mro", "name", "SIGRTMINx", "SIGRTMIN+abc", "SIGRTMIN+99"])
def test_unknown_stop_signal_is_refused(tmp_path: Path, sig: str) -> None:
    write(tmp_path, "alpha", GOOD.format(name="alpha", sig=sig))
    with pytest.raises(InvalidRequest, match=re.escape(f"unknown stop_signal {sig!r}")):
        load_recipes(tmp_path)


def test_non_string_stop_signal_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "alpha", 'name = "alpha"\nbuilder = "busybox"\nstop_signal = 15\n')
    with pytest.raises(InvalidRequest, match="unknown stop_signal 15"):
        load_recipes(tmp_path)


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "alpha", GOOD.format(name="alpha", sig="SIGTERM") + "colour = 'red'\n")
    with pytest.raises(InvalidRequest, match=r"alpha\.toml.*colour"):
        load_recipes(tmp_path)


def test_missing_builder_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "alpha", 'name = "alpha"\n')
    with pytest.raises(InvalidRequest, match="builder"):
        load_recipes(tmp_path)


def test_get_recipe(tmp_path: Path) -> None:
    write(tmp_path, "alpha", GOOD.format(name="alpha", sig="SIGTERM"))
    write(tmp_path, "beta", GOOD.format(name="beta", sig="SIGTERM"))
    assert get_recipe(tmp_path, "beta").name == "beta"
    with pytest.raises(NotFound) as e:
        get_recipe(tmp_path, "gamma")
    assert e.value.message == "no template recipe named 'gamma'; known recipes: alpha, beta"
    with pytest.raises(NotFound, match="known recipes: none"):
        get_recipe(tmp_path / "nothing", "gamma")


@pytest.mark.parametrize("name,number", [
    ("SIGTERM", signal.SIGTERM), ("SIGUSR2", signal.SIGUSR2), ("SIGKILL", 9), ("SIGPWR", signal.SIGPWR),
    ("SIGRTMIN", signal.SIGRTMIN), ("SIGRTMIN+3", signal.SIGRTMIN + 3),
])
def test_signal_number(name: str, number: int) -> None:
    assert signal_number(name) == number


def test_the_repo_recipes_all_load() -> None:
    recipes = load_recipes(REPO / "templates")
    assert "busybox" in recipes
    for name, recipe in recipes.items():
        assert recipe.name == name
        assert recipe.builder in BUILDERS, f"{name}: no builder {recipe.builder!r}"
        assert 0 < signal_number(recipe.stop_signal) <= signal.SIGRTMAX
        assert recipe.init and recipe.init[0].startswith("/")
        if recipe.files is not None:
            assert recipe.files_dir is not None and recipe.files_dir.is_dir(), f"{name}: files dir missing"
    bb = recipes["busybox"]
    assert bb.stop_signal == "SIGUSR2"  # busybox init powers off on SIGUSR2


# ---------------------------------------------------------------- is_static_elf

def fake_elf(path: Path, program_types: list[int], elf_class: int = 2) -> Path:
    """A minimal little-endian ELF64 header followed by a program header table."""
    phoff, phentsize = 64, 56
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4] = elf_class
    header[5] = 1  # little endian
    struct.pack_into("<Q", header, 32, phoff)
    struct.pack_into("<HH", header, 54, phentsize, len(program_types))
    table = b"".join(struct.pack("<I", t) + bytes(phentsize - 4) for t in program_types)
    path.write_bytes(bytes(header) + table)
    return path


def test_is_static_elf_on_synthetic_headers(tmp_path: Path) -> None:
    PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4
    assert busybox.is_static_elf(fake_elf(tmp_path / "static", [PT_LOAD, PT_LOAD, PT_NOTE]))
    assert not busybox.is_static_elf(fake_elf(tmp_path / "dynamic", [PT_LOAD, PT_INTERP, PT_DYNAMIC]))
    assert not busybox.is_static_elf(fake_elf(tmp_path / "elf32", [PT_LOAD], elf_class=1))


def test_is_static_elf_refuses_non_elf(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n" + "x" * 100)
    assert not busybox.is_static_elf(script)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert not busybox.is_static_elf(empty)


def test_is_static_elf_on_real_binaries() -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("/bin/busybox is missing: apt-get install busybox-static")
    assert busybox.is_static_elf(Path("/bin/busybox")), "busybox-static's /bin/busybox is static"
    assert not busybox.is_static_elf(Path("/bin/ls")), "/bin/ls needs the dynamic loader"


def _nodes(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if not p.is_symlink() and (p.is_char_device() or p.is_block_device()))


def _needs_mknod() -> None:
    import os
    if os.geteuid() != 0:
        pytest.fail("making device nodes needs root: run the suite as root")


def test_drop_device_nodes_keeps_everything_else(tmp_path: Path) -> None:
    import os
    import stat
    from ctd.storage.archive import drop_device_nodes
    _needs_mknod()
    root = tmp_path / "rootfs"
    (root / "dev/pts").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("x\n")
    os.mknod(root / "dev/console", stat.S_IFCHR | 0o666, os.makedev(5, 1))
    os.mknod(root / "dev/loop0", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    os.mknod(root / "dev/pts/ptmx", stat.S_IFCHR | 0o666, os.makedev(5, 2))
    os.mkfifo(root / "dev/initctl")
    os.symlink("/proc/self/fd", root / "dev/fd")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mknod(outside / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.symlink(str(outside), root / "dev/elsewhere")   # never followed
    assert sorted(drop_device_nodes(root)) == ["dev/console", "dev/loop0", "dev/pts/ptmx"]
    assert _nodes(root) == []
    assert (root / "dev/initctl").exists() and (root / "dev/fd").is_symlink()
    assert (root / "etc/hostname").read_text() == "x\n"
    assert (outside / "null").is_char_device()


def test_built_template_has_no_device_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the builder leaves (mmdebstrap: dev/console, dev/null ...), the committed
    template holds no node."""
    import os
    import stat
    from ctd.state import StateDB
    from ctd.storage.dir import DirStorage
    from ctd.template.manager import TemplateManager
    _needs_mknod()

    def builder(recipe: Recipe, rootfs: Path, ctx: object) -> None:
        (rootfs / "dev").mkdir(parents=True)
        os.mknod(rootfs / "dev/console", stat.S_IFCHR | 0o666, os.makedev(5, 1))
        os.mknod(rootfs / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        (rootfs / "sbin").mkdir()
        (rootfs / "sbin/init").write_text("#!/bin/sh\n")

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "nodes.toml").write_text('name = "nodes"\nbuilder = "fake"\ninit = ["/sbin/init"]\n')
    monkeypatch.setitem(BUILDERS, "fake", builder)
    storage = DirStorage(tmp_path / "storage")
    storage.prepare()
    manager = TemplateManager(recipes, StateDB(tmp_path / "state.db"), storage)
    rec = manager.build_blocking("nodes")
    assert _nodes(Path(rec.path)) == [] and (Path(rec.path) / "rootfs/sbin/init").exists()
