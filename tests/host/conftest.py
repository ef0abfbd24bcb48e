"""Fixtures shared by the host tests of the Debian template."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def debian(ctd):
    """The debian-12 template, built once per run (about a minute, from the host's apt sources)."""
    ctd.client.run("POST", "/1.0/templates", {"name": "debian-12"})
    return "debian-12"
