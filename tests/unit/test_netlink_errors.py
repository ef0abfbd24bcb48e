"""A kernel refusal keeps the API's error kind: the errno is its own attribute (it once
replaced `code`, and clients got "code": 17 instead of "failed")."""

from __future__ import annotations

import errno

from ctd.api.errors import status_for
from ctd.network.netlink import NetlinkRefused


def test_a_refusal_is_a_failure_with_its_errno_beside_it() -> None:
    exc = NetlinkRefused("adding veth ks1", errno.EEXIST)
    assert exc.code == "failed" and exc.errno == errno.EEXIST
    assert "File exists" in str(exc)
    assert status_for(exc) == 500
