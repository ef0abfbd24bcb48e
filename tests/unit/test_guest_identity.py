"""A clone's new identity, written into a root from the host without following its links."""

from __future__ import annotations

import os
from pathlib import Path

from ctd import guest


def test_new_identity_replaces_machine_id_and_removes_host_keys_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0" * 32 + "\n")
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "sshd_config"):
        (root / "etc/ssh" / name).write_text(name)
    guest.new_identity(root)
    machine_id = (root / "etc/machine-id").read_text().strip()
    assert machine_id != "0" * 32 and len(machine_id) == 32
    assert sorted(os.listdir(root / "etc/ssh")) == ["sshd_config"]


def test_new_identity_stays_inside_the_root(tmp_path: Path) -> None:
    """A tenant's /etc/ssh that links to a host directory: what gets removed is inside the
    root (the link resolves there), never the host's files."""
    host_dir = tmp_path / "host-ssh"
    host_dir.mkdir()
    (host_dir / "ssh_host_rsa_key").write_text("the host's own key")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/ssh").symlink_to(host_dir)   # absolute: resolved inside the root, where it is missing
    guest.new_identity(root)
    assert (host_dir / "ssh_host_rsa_key").read_text() == "the host's own key"
    assert len((root / "etc/machine-id").read_text().strip()) == 32
