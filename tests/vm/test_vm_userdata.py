"""The admin's cloud-init user-data and vendor-data on a VM's seed: merged after ctd's own
cloud-config with the documented merge type, kept across a seed rebuild (set), and refused when
bad (size, NUL, unknown format, Windows, a template without cloud-init) with nothing left."""

from __future__ import annotations

import email
import json
from pathlib import Path

import pytest

from tests.vm.test_vm_config import iso_file

pytestmark = pytest.mark.slow


def parts(seed: Path) -> list[tuple[str, str | None, str]]:
    """(content type, Merge-Type, text) of each part of the seed's user-data."""
    message = email.message_from_string(iso_file(seed, "user-data"))
    assert message.is_multipart()
    return [(p.get_content_type(), p.get("Merge-Type"), p.get_payload(decode=True).decode())
            for p in message.get_payload()]


def test_user_data_goes_after_ctds_settings_and_vendor_data_as_it_is(ctd, tmp_path):
    name, clone = ctd.unique("ud"), ctd.unique("udc")
    seed = ctd.state_dir / "storage/instances" / name / "seed.iso"
    user = tmp_path / "user.yaml"
    user.write_text("#cloud-config\nhostname: evil\nruncmd:\n  - [touch, /root/made-by-user-data]\n")
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text("#cloud-config\npackages: [htop]\n")
    try:
        ctd.ok("create", name, "--type", "vm", "--disk", "64M", "--user-data", str(user),
               "--vendor-data", str(vendor), "--timezone", "Europe/Paris")
        (ours_type, ours_merge, ours), (theirs_type, merge, theirs) = parts(seed)
        assert ours_type == "text/cloud-config" and ours_merge is None
        assert json.loads(ours.split("\n", 1)[1])["hostname"] == name   # ctd's first
        assert theirs_type == "text/cloud-config" and theirs == user.read_text()
        assert merge == "dict(no_replace,recurse_list)+list(append)+str()"   # ctd's keys win
        assert iso_file(seed, "vendor-data") == vendor.read_text()
        meta = json.loads(iso_file(seed, "meta-data"))
        # a set rebuilds the seed: the admin's part is still there, and the instance-id changed
        ctd.ok("set", name, "--timezone", "UTC")
        assert parts(seed)[1][2] == user.read_text()
        assert json.loads(iso_file(seed, "meta-data"))["instance-id"] != meta["instance-id"]
        # a clone carries them too (a new instance-id: cloud-init runs them again there)
        ctd.ok("clone", name, clone)
        clone_seed = ctd.state_dir / "storage/instances" / clone / "seed.iso"
        assert parts(clone_seed)[1][2] == user.read_text() and iso_file(clone_seed, "vendor-data") == vendor.read_text()
    finally:
        ctd.ctl("destroy", "--force", name)
        ctd.ctl("destroy", "--force", clone)


def test_bad_user_data_is_refused_and_leaves_nothing(ctd, tmp_path):
    name = ctd.unique("udb")
    vmdir = ctd.state_dir / "storage/instances" / name
    cases = {"big": ("#cloud-config\n" + "#" * (64 * 1024), "at most 64 KiB"),
             "nul": ("#cloud-config\n\0", "NUL"),
             "plain": ("hello: world\n", "must start with #cloud-config")}
    for what, (text, error) in cases.items():
        f = tmp_path / what
        f.write_text(text)
        r = ctd.ctl("create", name, "--type", "vm", "--disk", "64M", "--user-data", str(f))
        assert r.code != 0 and error in r.err, (what, r.err)
        assert not vmdir.exists()
    good = tmp_path / "good"
    good.write_text("#!/bin/sh\ntouch /root/x\n")
    r = ctd.ctl("create", name, "--type", "vm", "--profile", "windows", "--disk", "64M", "--user-data", str(good))
    assert r.code != 0 and "Windows" in r.err, r.err
    # ctd's busybox template has no cloud-init: the admin's file would be ignored, so refused
    r = ctd.ctl("create", name, "--type", "vm", "--template", "busybox", "--disk", "64M", "--user-data", str(good))
    assert r.code != 0 and "has no cloud-init" in r.err, r.err
    assert not vmdir.exists()
    assert name not in ctd.ok("list")
