"""Transfers.check_restore: a backup's header is read within bounds (the fields themselves are
checked by restore_plan: tests/unit/test_restore_plan.py)."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ctd.errors import InvalidRequest
from ctd.instance.transfer import Transfers


class FakeInstances:
    storage = db = None
    host_cpus = [0, 1]

    def __init__(self) -> None:
        self.reserved: list[str] = []

    def reserve(self, name: str, instance_id: int | None, hint: str) -> int:
        self.reserved.append(name)
        return 100


def test_a_header_nested_too_deeply_is_400(tmp_path: Path) -> None:
    """ctd-backup.json may be 1 MiB: 500,000 '[' made json.loads raise RecursionError (a 500)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        body = b"[" * 500_000 + b"]" * 500_000
        ti = tarfile.TarInfo("ctd-backup.json")
        ti.size = len(body)
        tf.addfile(ti, io.BytesIO(body))
    path = tmp_path / "deep.backup"
    path.write_bytes(raw.getvalue())
    with pytest.raises(InvalidRequest, match="nests too deeply"):
        Transfers(FakeInstances()).check_restore({"file": str(path)})  # type: ignore[arg-type]


def test_a_backup_starting_with_a_huge_pax_header_is_400_unread(tmp_path: Path) -> None:
    """The backup's outer tar is read by tarfile too: a PAX header declaring 64 MiB would be
    read whole (three copies) before ctd-backup.json is even looked at."""
    import tracemalloc
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type, ti.size = tarfile.XHDTYPE, 64 << 20
    path = tmp_path / "bomb.backup"
    with path.open("wb") as fh:
        fh.write(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
        fh.truncate(512 + (64 << 20) + 1536)  # zeros (sparse here): the header's "records"
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest, match="PAX header of 67108864 bytes"):
            Transfers(FakeInstances()).check_restore({"file": str(path)})  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak
