"""QEMU installed while ctd runs: a VM create asks again instead of refusing until a restart,
and the driver state `ctctl check` shows follows (it once said OK and WARN at once)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ctd.config import DaemonConfig
from ctd.errors import NotSupported
from ctd.instance import manager as manager_mod
from ctd.instance.manager import InstanceManager


def bare_manager(tmp_path: Path) -> InstanceManager:
    """Only what probing touches (no cgroups, storage or network are used by it)."""
    m = object.__new__(InstanceManager)
    m.config = DaemonConfig(state_dir=tmp_path)
    m.vms = None
    m._probe_lock = threading.Lock()
    m.vm_state = {}
    m.cgroups = m.network = m.storage = None  # type: ignore[assignment]
    return m


def test_qemu_installed_after_start_is_found_when_asked(tmp_path: Path, monkeypatch) -> None:
    installed: dict[str, str | None] = {"path": None}
    monkeypatch.setattr(manager_mod.shutil, "which", lambda name: installed["path"] if name == "qemu-system-x86_64"
                        else None)
    m = bare_manager(tmp_path)
    state = m.probe_vms()
    shown = state   # what the daemon's info (GET /1.0, ctctl check) holds
    assert state["usable"] is False and "apt-get install qemu-system-x86" in state["fix"]
    with pytest.raises(NotSupported, match="apt-get install qemu-system-x86"):
        m._check_vm({"vm": {}})

    installed["path"] = "/usr/bin/qemu-system-x86_64"   # apt-get install, ctd still running
    assert m._vms_or_refuse() is m.vms is not None
    assert m.vms.run_root == tmp_path / "run" / "vm"
    state = m.probe_vms()
    assert state["usable"] is True and state["accel"] in ("kvm", "tcg")
    driver = m.vms
    assert m.probe_vms()["usable"] and m.vms is driver   # attached once
    assert shown["usable"] is True   # the daemon's info follows without a restart
