"""InstanceOptions (ctd/state/options.py): the stored form reads back as it was written, keys it
does not know are kept but never copied, and a damaged column names the key that is wrong."""
from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ctd.errors import OperationFailed
from ctd.state import InstanceRecord, InstanceType, StateDB
from ctd.state.options import DataDisk, FirmwareType, InstanceOptions, Passwd, VmOptions

HASH = "$6$salt$" + "x" * 86
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx user@host"
# As ctd has always stored them (before the options were typed): a container, a template VM
CONTAINER = {"systemd": True, "network_style": "networkd", "ssh_keys": [KEY], "timezone": "UTC",
             "nameservers": ["192.0.2.53"], "io_uring": True, "passwd": {"user": "root", "hash": HASH},
             "cgroup_fixed": {"unified": "standby-12"}}
VM = {"network_style": "networkd", "ssh_keys": [], "timezone": None, "nameservers": [],
      "vm": {"profile": "linux", "compat": False, "disk_size": 1 << 30, "passwd": {"user": "ann", "hash": HASH},
             "kernel": "/boot/vmlinuz-6.1", "initrd": "/boot/initrd.img-6.1", "append": "console=ttyS0",
             "pristine": True}}


def test_what_ctd_wrote_reads_back_unchanged() -> None:
    c = InstanceOptions.from_stored(CONTAINER)
    assert (c.systemd, c.network_style, c.ssh_keys, c.io_uring) == (True, "networkd", (KEY,), True)
    assert c.passwd == Passwd("root", HASH) and dict(c.cgroup_fixed) == {"unified": "standby-12"}
    assert c.to_stored() == CONTAINER
    v = InstanceOptions.from_stored(VM)
    assert v.vm is not None and v.vm.kernel == "/boot/vmlinuz-6.1" and v.vm.pristine and not v.vm.windows
    assert v.to_stored() == {**VM, "systemd": False}   # a VM never had the key; false is what it meant
    assert InstanceOptions.from_stored({}).to_stored() == {
        "systemd": False, "network_style": "none", "ssh_keys": [], "timezone": None, "nameservers": []}


def test_a_created_vm_part_is_stored_as_before() -> None:
    """The checked request (VmOptions) is stored as VmOptions.stored() wrote it: no None keys."""
    assert VmOptions("windows", True, 64 << 20, iso="/srv/w.iso").to_stored() == {
        "profile": "windows", "compat": True, "disk_size": 64 << 20, "iso": "/srv/w.iso"}


def test_firmware_media_and_udev_are_stored_only_when_set() -> None:
    """The keys VMs gained later (firmware, media, guest_udev): absent means what older records
    meant (BIOS, empty drive, unknown guest), so those need no migration."""
    plain = VmOptions.from_stored(VM["vm"])
    assert (plain.firmware, plain.secure_boot, plain.tpm, plain.media, plain.boot_media, plain.guest_udev) == (
        FirmwareType.BIOS, False, False, None, False, None)
    full = dataclasses.replace(plain, firmware=FirmwareType.UEFI, secure_boot=True, tpm=True, media="/srv/r.iso",
                               boot_media=True, guest_udev=False, data_disks=(DataDisk("data1", 1 << 30),))
    stored = full.to_stored()
    assert {k: stored[k] for k in ("firmware", "secure_boot", "tpm", "media", "boot_media", "guest_udev",
                                   "data_disks")} == {
        "firmware": "uefi", "secure_boot": True, "tpm": True, "media": "/srv/r.iso", "boot_media": True,
        "guest_udev": False, "data_disks": [{"name": "data1", "size": 1 << 30}]}
    assert full.all_disks_size == (1 << 30) * 2
    assert VmOptions.from_stored(json.loads(json.dumps(stored))) == full
    assert plain.to_stored() == VM["vm"]


def test_unknown_keys_are_kept_and_written_back_but_never_copied() -> None:
    raw = {**VM, "from_a_newer_ctd": {"a": 1}, "vm": {**VM["vm"], "later": [1, 2]}}  # type: ignore[dict-item]
    o = InstanceOptions.from_stored(raw)
    assert o.extra == {"from_a_newer_ctd": {"a": 1}} and o.vm is not None and o.vm.extra == {"later": [1, 2]}
    assert o.to_stored() == {**raw, "systemd": False}
    copy = o.copyable()
    assert "from_a_newer_ctd" not in copy.to_stored() and copy.vm is not None and "later" not in copy.vm.to_stored()
    assert "from_a_newer_ctd" not in o.guest_stored()


def test_runtime_state_goes_with_the_run_and_stays_out_of_copies() -> None:
    o = dataclasses.replace(InstanceOptions.from_stored(CONTAINER), renaming="old")
    assert "cgroup_fixed" not in o.ended_run().to_stored() and o.ended_run().renaming == "old"
    assert not {"cgroup_fixed", "renaming"} & set(o.copyable().to_stored())
    assert set(o.guest_stored()) == {"systemd", "network_style", "ssh_keys", "timezone", "nameservers", "passwd"}
    assert o.guest() == InstanceOptions.from_stored(o.guest_stored())


def test_the_legacy_guest_pending_key_is_dropped() -> None:
    o = InstanceOptions.from_stored({"vm": {"disk_size": 1 << 30, "guest_pending": True}})
    assert o.vm is not None and o.vm.extra == {} and "guest_pending" not in json.dumps(o.to_stored())


@pytest.mark.parametrize(("raw", "key"), [
    (["systemd"], "options must be an object"),
    ({"systemd": "yes"}, "systemd must be true or false"),
    ({"io_uring": 1}, "io_uring must be true or false"),
    ({"ssh_keys": KEY}, "ssh_keys must be a list of strings"),
    ({"nameservers": [1]}, "nameservers must be a list of strings"),
    ({"timezone": 5}, "timezone must be a string"),
    ({"passwd": {"user": "root"}}, "passwd must have a user and a hash"),
    ({"cgroup_fixed": {"memory": 7}}, "cgroup_fixed must map"),
    ({"cgroup_fixed": ["x"]}, "cgroup_fixed must be an object"),
    ({"vm": []}, "vm must be an object"),
    ({"vm": {"disk_size": "10G"}}, "vm.disk_size must be a number"),
    ({"vm": {"disk_size": True}}, "vm.disk_size must be a number"),
    ({"vm": {"pristine": "no"}}, "vm.pristine must be true or false"),
    ({"vm": {"kernel": ["/boot/x"]}}, "vm.kernel must be a string"),
    ({"vm": {"passwd": "root:x"}}, "vm.passwd must be an object"),
    ({"vm": {"firmware": "coreboot"}}, "vm.firmware must be bios or uefi"),
    ({"vm": {"tpm": "2.0"}}, "vm.tpm must be true or false"),
    ({"vm": {"guest_udev": "yes"}}, "vm.guest_udev must be true or false"),
    ({"vm": {"media": 1}}, "vm.media must be a string"),
    ({"vm": {"data_disks": [{"name": "d", "size": "1G"}]}}, "vm.data_disks must be a list"),
])
def test_a_wrong_type_is_refused_naming_the_key(raw: Any, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        InstanceOptions.from_stored(raw)


def test_the_database_keeps_the_typed_options(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "ctd.db")
    rec = InstanceRecord(id=100, name="web", type=InstanceType.VM, template="debian", hostname="web",
                         privileged=False, idmap_base=None, options=InstanceOptions.from_stored(VM))
    db.add_instance(rec)
    (stored,) = db.conn.execute("SELECT options FROM instances WHERE id = 100").fetchone()
    assert json.loads(stored) == {**VM, "systemd": False}
    assert db.get_instance("web") == rec
    db.close()


def test_a_hand_edited_row_names_the_instance_and_the_key(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "ctd.db")
    db.add_instance(InstanceRecord(id=100, name="web", type=InstanceType.CONTAINER, template="busybox",
                                   hostname="web", privileged=False, idmap_base=1 << 20))
    edit = sqlite3.connect(tmp_path / "ctd.db")
    edit.execute("""UPDATE instances SET options = '{"systemd": "yes"}'""")
    edit.commit()
    edit.close()
    with pytest.raises(OperationFailed, match=r"instance web: options\.systemd must be true or false"):
        db.get_instance(100)
    db.close()
