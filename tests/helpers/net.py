"""A host network of the test's own (a bridge ctd makes), removed when the test is done."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterator


def unique_ipv6_prefix() -> str:
    """A unique-local /64 of our own (fd00::/8 with a random 40-bit global id)."""
    gid = random.getrandbits(40)
    return f"fd{gid >> 32:02x}:{(gid >> 16) & 0xffff:x}:{gid & 0xffff:x}:1::/64"


@contextlib.contextmanager
def own_network(ctd, prefix: str, *options: str) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    """`ctctl network create` with options; yields the API's view of it; deleted afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    ctd.ok("network", "create", name, *options)
    try:
        yield ctd.client.get(f"/1.0/networks/{name}")["network"]
    finally:
        if ctd.ctl("network", "delete", name).code != 0:
            # A test that failed half-way left instances on it (ctd refuses to delete a network
            # in use): they go first, or the bridge would outlive the test.
            for inst in ctd.client.get("/1.0/instances")["instances"]:
                if any(nic.get("network") == name for nic in inst.get("nics") or []):
                    ctd.ctl("destroy", "--force", inst["name"])
            ctd.ctl("network", "delete", name)
