"""ctd/storage base + dir driver without root: names, snapshot/rollback/clone by copy,
crash repair, quota refused, usage, pool_info."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctd.errors import Conflict, InvalidRequest, NotFound, NotSupported
from ctd.storage.base import check_component, tree_usage
from ctd.storage.dir import DirStorage

MiB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> DirStorage:
    d = DirStorage(tmp_path / "storage")
    d.prepare()
    staging = d.new_template_dir("base")
    (staging / "rootfs/etc").mkdir()
    (staging / "rootfs/etc/hostname").write_text("template\n")
    d.commit_template("base", staging)
    return d


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "/abs", ".hidden", "nul\0"])
def test_component_names_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        check_component("instance", bad)


def test_component_names_accepted() -> None:
    assert check_component("snapshot", "before-upgrade_2.0") == "before-upgrade_2.0"


def test_snapshot_rollback_clone(store: DirStorage) -> None:
    root = store.create_instance("web", "base")
    (root / "f").write_text("1")
    store.snapshot_instance("web", "s1")
    (root / "f").write_text("2")
    store.rollback("web", "s1")
    assert (store.rootfs("web") / "f").read_text() == "1"
    clone = store.clone_instance("web", "copy", from_snapshot="s1")
    (clone / "f").write_text("3")
    assert (store.rootfs("web") / "f").read_text() == "1"
    assert store.list_snapshots("web") == ["s1"] and store.list_snapshots("copy") == []
    assert store.instance_names() == ["copy", "web"]
    with pytest.raises(Conflict):
        store.snapshot_instance("web", "s1")
    with pytest.raises(NotFound):
        store.list_snapshots("ghost")
    store.delete_snapshot("web", "s1")
    assert store.list_snapshots("web") == []
    store.delete_instance("web")
    assert store.instance_names() == ["copy"]


def test_failed_clone_leaves_nothing(store: DirStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create_instance("web", "base")

    def boom(*a, **kw):  # type: ignore[no-untyped-def]
        raise OSError("disk full")
    monkeypatch.setattr(store, "_copy_root", boom)
    with pytest.raises(OSError):
        store.clone_instance("web", "copy")
    assert store.instance_names() == ["web"]


def test_recover_partial_undoes_a_rollback_that_lost_its_new_root(store: DirStorage) -> None:
    root = store.create_instance("web", "base")
    (root / "f").write_text("old")
    base = store.instance_path("web")
    root.rename(base / ".rootfs-old")  # renamed away, the new root never arrived
    assert store.recover_partial() == ["web: rollback undone"]
    assert (store.rootfs("web") / "f").read_text() == "old"
    assert store.recover_partial() == []


def test_quota_not_supported(store: DirStorage) -> None:
    store.create_instance("web", "base")
    with pytest.raises(NotSupported, match="btrfs"):
        store.set_quota("web", 10 * MiB)
    store.set_quota("web", None)
    assert store.quota("web") is None


def test_usage_and_pool_info(store: DirStorage) -> None:
    root = store.create_instance("web", "base")
    before = store.usage("web")
    (root / "blob").write_bytes(os.urandom(2 * MiB))
    os.link(root / "blob", root / "hardlink")  # counted once
    assert 2 * MiB <= store.usage("web") - before < 3 * MiB
    assert tree_usage(root) == store.usage("web")
    info = store.pool_info()
    assert set(info) >= {"driver", "path", "size", "used", "free"}
    assert info["driver"] == "dir" and "image" not in info
