"""Fixtures of the Vagrant provider tests: the debian-12 template, the plugin, a box."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.vagrant import Vagrant, install
from tests.host.conftest import debian  # noqa: F401  (the debian-12 template fixture)


@pytest.fixture(scope="module")
def vagrant(ctd, tmp_path_factory: pytest.TempPathFactory) -> Vagrant:
    return install(tmp_path_factory.mktemp("vagrant"), ctd.socket)


@pytest.fixture(scope="module")
def box(ctd, debian, vagrant: Vagrant) -> Iterator[str]:  # noqa: F811
    """The debian-12 template exported as a box and added to Vagrant as ctd-debian-12."""
    out = Path(vagrant.home).parent / "debian-12.box"
    ctd.ok("template", "export", debian, "--vagrant-box", str(out), timeout=900)
    vagrant.ok(out.parent, "box", "add", "--name", "ctd-debian-12", str(out))
    yield "ctd-debian-12"
    # the template the plugin imported is cached by design; the test's daemon does not keep it
    ctd.ctl("template", "delete", "vagrant-ctd-debian-12-0")
