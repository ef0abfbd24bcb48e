"""Fixtures shared by the host tests of the Debian template."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def debian(ctd):
    """The debian-12 template, built once per run (one to three minutes here, from the host's apt
    sources: longer than the client's usual 120 s on a busy machine)."""
    from ctctl.client import Client
    Client(str(ctd.socket), timeout=900).run("POST", "/1.0/templates", {"name": "debian-12"})
    return "debian-12"
