"""QEMU installed while ctd runs: a VM create asks again instead of refusing until a restart,
and the driver state `ctctl check` shows follows (it once said OK and WARN at once)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ctd.config import DaemonConfig
from ctd.errors import NotSupported
from ctd.instance.kinds import Kinds
from ctd.instance.vm import kind as vm_kind_mod


def bare_kinds(tmp_path: Path) -> Kinds:
    """Only what probing touches (no cgroups, storage or network are used by it)."""
    ctx = SimpleNamespace(config=DaemonConfig(state_dir=tmp_path), cgroups=None, network=None, storage=None)
    return Kinds(ctx, None, lambda name, status: None)  # type: ignore[arg-type]


def test_qemu_installed_after_start_is_found_when_asked(tmp_path: Path, monkeypatch) -> None:
    installed: dict[str, str | None] = {"path": None}
    monkeypatch.setattr(vm_kind_mod.shutil, "which", lambda name: installed["path"] if name == "qemu-system-x86_64"
                        else None)
    kinds = bare_kinds(tmp_path)
    m = kinds.vm
    state = m.probe()
    shown = state   # what the daemon's info (GET /1.0, ctctl check) holds
    assert state["usable"] is False and "apt-get install qemu-system-x86" in state["fix"]
    with pytest.raises(NotSupported, match="apt-get install qemu-system-x86"):
        m.check_body({"vm": {}})
    with pytest.raises(NotSupported, match="apt-get install qemu-system-x86"):
        kinds.require(m)

    installed["path"] = "/usr/bin/qemu-system-x86_64"   # apt-get install, ctd still running
    assert kinds.require(m) is m and m.driver is not None
    assert m.driver.run_root == tmp_path / "run" / "vm"
    state = m.probe()
    assert state["usable"] is True and state["accel"] in ("kvm", "tcg")
    driver = m.driver
    assert m.probe()["usable"] and m.driver is driver   # attached once
    assert shown["usable"] is True   # the daemon's info follows without a restart
