"""Fixtures shared by the VM tests: a network of the test's own, an SSH key pair, and the
debian-12 template a booted guest is made from."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctctl.client import Client
from tests.conftest import Daemon


@pytest.fixture
def net(ctd: Daemon) -> Iterator[str]:
    """A network of the test's own, deleted after it (its VMs are destroyed first, in the test)."""
    name = f"tv{uuid.uuid4().hex[:6]}"
    ctd.ok("network", "create", name)
    yield name
    ctd.ctl("network", "delete", name)


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    """A fresh ed25519 key pair: the private key's path (the public one is KEY.pub)."""
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def debian(ctd: Daemon) -> str:
    """The debian-12 template (built once per daemon: one to three minutes here, longer than the
    client's usual 120 s on a busy machine)."""
    Client(str(ctd.socket), timeout=900).run("POST", "/1.0/templates", {"name": "debian-12"})
    return "debian-12"
