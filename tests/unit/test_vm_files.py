"""The sparse file stream of a VM migration (ctd/cluster/vm_files.py): what a source sends
arrives the same and sparse; a hostile peer's records are refused."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from ctd.cluster import vm_files
from ctd.errors import InvalidRequest

R = vm_files.RECORD


def test_a_sparse_file_arrives_identical_and_sparse(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    with open(src, "wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(3 << 20)
        fh.write(os.urandom(1 << 20) + b"\0" * (2 << 20) + b"tail")
        fh.seek((64 << 20) - 5)
        fh.write(b"last!")
    sent = [0]
    stream = b"".join(vm_files.records(src, sent))
    assert sent[0] <= (1 << 20) + (1 << 20) + 4096 * 2   # the zero block is not sent
    budget = vm_files.Budget(vm_files.data_bytes(src))
    got = vm_files.receive(io.BytesIO(stream), tmp_path / "out.raw", 64 << 20, budget, "t")
    assert got == sent[0]
    assert (tmp_path / "out.raw").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "out.raw").st_blocks * 512 < 8 << 20   # still sparse


@pytest.mark.parametrize(("records", "said"), [
    (R.pack(60, 10) + b"x" * 10 + R.pack(0, 0), "outside"),                      # past the end
    (R.pack(0, 8) + b"x" * 8 + R.pack(4, 2) + b"yy" + R.pack(0, 0), "before"),   # a rewrite
    (R.pack(0, 8) + b"x" * 8, "ended early"),                                     # no end record
    (R.pack(0, 8) + b"x" * 3, "ended early"),                                     # cut in a record
    (R.pack(0, 1) + b"x" + R.pack(0, 0) + b"more", "after the file's end"),
    (R.pack(0, 40) + b"x" * 40 + R.pack(0, 0), "more data than"),                 # over the budget
    (R.pack(0, vm_files.MAX_RECORD + 1), "outside"),
])
def test_hostile_records_are_refused(tmp_path: Path, records: bytes, said: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        vm_files.receive(io.BytesIO(records), tmp_path / "f", 64, vm_files.Budget(32), "t")
    assert said in err.value.message


def test_an_existing_file_or_link_is_never_written(tmp_path: Path) -> None:
    (tmp_path / "victim").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "victim")
    for name in ("victim", "link"):
        with pytest.raises(InvalidRequest):
            vm_files.receive(io.BytesIO(R.pack(0, 0)), tmp_path / name, 4, vm_files.Budget(4), "t")
    assert (tmp_path / "victim").read_text() == "keep"
