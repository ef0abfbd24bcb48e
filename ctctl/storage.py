"""ctctl storage: the storage pool's driver, path, size, use and quota state."""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import emit, human_bytes
from ctctl.shared import FORMAT, client


def _quota_state(info: dict[str, Any]) -> str:
    if not info.get("quota"):
        return "off"
    if info.get("quota_consistent") is False:
        return "on, numbers inconsistent: limits do not hold until the rescan ctd started ends"
    if info.get("quota_mode_reason"):  # simple quotas or full qgroups, and why
        return f"on, {info['quota_mode_reason']}"
    return "on"


@click.command()
@FORMAT
def storage(fmt: str) -> None:
    """The storage pool: driver, path, size, used, free."""
    info = client().get("/1.0/storage")["storage"]

    def render(i: dict[str, Any]) -> str:
        rows = [("driver", i["driver"]), ("path", i["path"]), ("size", human_bytes(i.get("size"))),
                ("used", human_bytes(i.get("used"))), ("free", human_bytes(i.get("free"))),
                ("quota", _quota_state(i))]
        rows += [(k, i[k]) for k in ("image", "device", "reason") if i.get(k)]
        if "direct_io" in i:  # losetup's DIO column: the loop device reads the image with O_DIRECT
            rows.append(("dio", "on" if i["direct_io"] else f"off: {i.get('direct_io_reason', '')}"))
        return "\n".join(f"{k + ':':<8} {v}" for k, v in rows)

    emit(fmt, info, render)


COMMANDS = (storage,)
