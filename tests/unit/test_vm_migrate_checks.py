"""What a VM migration's target accepts of the source's file list (vm_migrate_receive._files):
only the files a VM of that header has, with the sizes it says; anything else is refused."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ctd.cluster.vm_migrate_receive import _files
from ctd.errors import InvalidRequest
from ctd.state.options import DataDisk, VmOptions
from ctd.storage.backup.vmarchive import VmExpect

M = 1 << 20


def plan(uefi: bool = False, tpm: bool = False) -> Any:
    vm = VmOptions(disk_size=64 * M, data_disks=(DataDisk("data1", 128 * M),))
    return SimpleNamespace(vm=vm, expect=VmExpect(64 * M, 540672 if uefi else None, tpm))


def test_the_files_of_the_vm_are_accepted() -> None:
    files = {"disk.raw": 64 * M, "data-data1.raw": 128 * M}
    assert _files(files, plan()) == files
    uefi = {**files, "OVMF_VARS.fd": 540672, "tpm/tpm2-00.permall": 9000}
    assert _files(uefi, plan(uefi=True, tpm=True)) == uefi


@pytest.mark.parametrize(("files", "said"), [
    ({"disk.raw": 64 * M}, "missing data-data1.raw"),
    ({"disk.raw": 64 * M + 1, "data-data1.raw": 128 * M}, "not one this VM has"),
    ({"disk.raw": 64 * M, "data-data1.raw": 128 * M, "../../etc/passwd": 5}, "not one this VM has"),
    ({"disk.raw": 64 * M, "data-data1.raw": 128 * M, "data-other.raw": 64 * M}, "not one this VM has"),
    ({"disk.raw": 64 * M, "data-data1.raw": 128 * M, "OVMF_VARS.fd": 540672}, "not one this VM has"),
    ({"disk.raw": 64 * M, "data-data1.raw": 128 * M, "tpm/x": 5}, "without a TPM"),
    ({"disk.raw": 64 * M, "data-data1.raw": 128 * M, "seed.iso": 5}, "not one this VM has"),
    ({"disk.raw": -1, "data-data1.raw": 128 * M}, "must be a number"),
    ({"disk.raw": True, "data-data1.raw": 128 * M}, "must be a number"),
    (["disk.raw"], "must be an object"),
])
def test_anything_else_is_refused(files: Any, said: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _files(files, plan())
    assert said in err.value.message


def test_tpm_files_are_plain_small_names() -> None:
    base = {"disk.raw": 64 * M, "data-data1.raw": 128 * M}
    for bad in ({"tpm/../disk.raw": 5}, {"tpm/.hidden": 5}, {"tpm/a/b": 5}, {"tpm/big": 2 * M}):
        with pytest.raises(InvalidRequest):
            _files({**base, **bad}, plan(tpm=True))
    with pytest.raises(InvalidRequest, match="too many"):
        _files({**base, **{f"tpm/f{i}": 1 for i in range(17)}}, plan(tpm=True))
