"""The admin's cloud-init files (vm/userdata.py) and the grow check (vm/disks.py), without QEMU."""

from __future__ import annotations

import email
import os
from pathlib import Path

import pytest

from ctd.errors import Conflict, InvalidRequest
from ctd.instance.vm import disks, userdata
from ctd.instance.vm.seed import Seed, content_id, user_data
from ctd.state import InstanceRecord, InstanceType
from ctd.state.options import InstanceOptions, VmOptions


def test_user_data_formats_size_and_nul():
    assert userdata.check("#cloud-config\nruncmd: []\n", "user_data")
    assert userdata.check("#!/bin/sh\ntrue\n", "user_data")
    with pytest.raises(InvalidRequest, match="must start with"):
        userdata.check("runcmd: []\n", "user_data")
    with pytest.raises(InvalidRequest, match="64 KiB"):
        userdata.check("#!/bin/sh\n" + "x" * userdata.MAX_BYTES, "vendor_data")
    with pytest.raises(InvalidRequest, match="NUL"):
        userdata.check("#!/bin/sh\n\0", "user_data")
    with pytest.raises(InvalidRequest, match="string"):
        userdata.check(["#!/bin/sh"], "user_data")


def test_merged_puts_ctds_part_first_and_is_deterministic():
    seed = Seed("i-1", "web1", admin_user_data="#!/bin/sh\necho hi\n")
    text = user_data(seed)
    assert text == user_data(seed)   # the instance-id digest depends on it
    message = email.message_from_string(text)
    first, second = message.get_payload()
    assert first.get_content_type() == "text/cloud-config" and b'"hostname": "web1"' in first.get_payload(decode=True)
    assert second.get_content_type() == "text/x-shellscript" and second["Merge-Type"] == userdata.ADMIN_MERGE
    assert second.get_payload(decode=True) == b"#!/bin/sh\necho hi\n"
    plain = Seed("i-1", "web1")
    assert user_data(plain).startswith("#cloud-config\n")
    assert content_id(plain) != content_id(seed) != content_id(Seed("i-1", "web1", vendor_data="#cloud-config\n"))


def _vm(tmp_path: Path) -> InstanceRecord:
    return InstanceRecord(id=100, name="v", type=InstanceType.VM, template="", hostname="v", privileged=False,
                          idmap_base=None, limits={}, created_at="", init=[],
                          options=InstanceOptions(vm=VmOptions(kernel="/k")))


def test_grow_refuses_shrink_unaligned_and_a_missing_or_symlinked_disk(tmp_path):
    rec, disk = _vm(tmp_path), tmp_path / "disk.raw"
    with pytest.raises(Conflict):
        disks.plan(rec, disk, 1 << 30)
    disk.touch()
    os.truncate(disk, 64 << 20)
    with pytest.raises(InvalidRequest, match="never shrinks"):
        disks.plan(rec, disk, 32 << 20)
    with pytest.raises(InvalidRequest, match="512-byte"):
        disks.plan(rec, disk, (64 << 20) + 1)
    grow = disks.plan(rec, disk, 128 << 20)
    assert grow.changes and grow.old == 64 << 20
    assert not disks.plan(rec, disk, 64 << 20).changes
    assert "applier" in disks.note(rec, grow, running=True)
    link = tmp_path / "link.raw"
    link.symlink_to(disk)
    with pytest.raises(Conflict):
        disks.plan(rec, link, 128 << 20)


def test_online_note_says_what_ctd_knows_of_the_guest():
    from ctd.instance.vm.resize import online_note
    assert online_note(True, 1) is None and online_note(None, 0) is None
    assert "no udev" in online_note(False, 1)
    assert "cannot see" in online_note(None, 2)


def test_has_udev_looks_in_the_guest_only(tmp_path):
    from ctd.instance.vm.rootdisk import has_udev
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    assert not has_udev(tmp_path)
    (tmp_path / "usr/bin/udevadm").symlink_to("/nonexistent/in/the/host")   # a guest link, not followed
    assert has_udev(tmp_path)


def test_data_disk_names_and_the_files_snapshots_take(tmp_path):
    from ctd.errors import NotFound
    from ctd.instance.vm import datadisks
    from ctd.state.options import DataDisk
    from ctd.storage.base import vm_disk_files
    vm = VmOptions(data_disks=(DataDisk("data1", 64 << 20), DataDisk("logs", 64 << 20)))
    assert datadisks.check_name(None, vm) == "data2" and datadisks.check_name("db", vm) == "db"
    with pytest.raises(Conflict, match="already"):
        datadisks.check_name("logs", vm)
    for bad in ("Data", "1abc", "a/b", "x" * 17, 5):
        with pytest.raises(InvalidRequest, match="invalid disk name"):
            datadisks.check_name(bad, vm)
    with pytest.raises(NotFound, match="data1, logs"):
        datadisks.find(vm, "nosuch")
    assert [d.id for d in datadisks.spec_disks(tmp_path, vm)] == ["data-data1", "data-logs"]
    for file in ("disk.raw", "data-logs.raw", "data-data1.raw", "OVMF_VARS.fd"):
        (tmp_path / file).touch()
    (tmp_path / "data-evil.raw").symlink_to("/etc/shadow")   # never followed into a snapshot
    assert vm_disk_files(tmp_path) == ["disk.raw", "data-data1.raw", "data-logs.raw"]
