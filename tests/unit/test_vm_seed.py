"""cloud-init NoCloud seed: the three documents, their checks, and the ISO."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ctd.errors import InvalidRequest
from ctd.instance.vm.seed import Seed, SeedNic, build_seed_iso, meta_data, network_config, user_data

HASH = "$6$rounds=5000$saltsalt$Qb0jEqW6Yz7p3a9H3OQ1xZ0xk0n7Tj5nqH8Dz0Y1E6bTj1U4b8h3m7rQ5w2cA9e1F0g3H6i9J2k5L8m1N4o7P."
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"


def seed(**kw: object) -> Seed:
    base: dict[str, object] = dict(
        instance_id="vm-100-1", hostname="web1.example.net", root_password_hash=HASH,
        ssh_authorized_keys=[KEY],
        nics=[SeedNic("52:54:00:aa:bb:01", ["10.20.0.5/24", "fd00:20::5/64"], "10.20.0.1", "fd00:20::1",
                      ["10.20.0.1", "2001:db8::53"]),
              SeedNic("52:54:00:aa:bb:02", dhcp=True)])
    base.update(kw)
    return Seed(**base)  # type: ignore[arg-type]


def test_meta_data() -> None:
    assert yaml.safe_load(meta_data(seed())) == {"instance-id": "vm-100-1", "local-hostname": "web1.example.net"}


def test_user_data() -> None:
    text = user_data(seed())
    assert text.startswith("#cloud-config\n")   # cloud-init ignores user-data without it
    cfg = yaml.safe_load(text)
    assert cfg["hostname"] == "web1" and cfg["fqdn"] == "web1.example.net"
    assert cfg["disable_root"] is False and cfg["ssh_pwauth"] is True
    assert cfg["chpasswd"] == {"expire": False}
    assert cfg["users"] == [{"name": "root", "lock_passwd": False, "hashed_passwd": HASH,
                             "ssh_authorized_keys": [KEY]}]


def test_user_data_without_password_keeps_root_locked() -> None:
    cfg = yaml.safe_load(user_data(seed(root_password_hash=None, hostname="db")))
    assert "chpasswd" not in cfg and "ssh_pwauth" not in cfg and "fqdn" not in cfg
    assert cfg["users"] == [{"name": "root", "ssh_authorized_keys": [KEY]}]


def test_network_config_v2() -> None:
    cfg = yaml.safe_load(network_config(seed()))
    assert cfg == {"version": 2, "ethernets": {
        "eth0": {"match": {"macaddress": "52:54:00:aa:bb:01"}, "set-name": "eth0",
                 "dhcp4": False, "dhcp6": False, "addresses": ["10.20.0.5/24", "fd00:20::5/64"],
                 "routes": [{"to": "0.0.0.0/0", "via": "10.20.0.1"}, {"to": "::/0", "via": "fd00:20::1"}],
                 "nameservers": {"addresses": ["10.20.0.1", "2001:db8::53"]}},
        "eth1": {"match": {"macaddress": "52:54:00:aa:bb:02"}, "set-name": "eth1",
                 "dhcp4": True, "dhcp6": True}}}


def test_hostile_values_stay_inside_their_strings() -> None:
    key = KEY + "\" }\nruncmd: [reboot]"
    with pytest.raises(InvalidRequest):
        seed(ssh_authorized_keys=[key]).validate()
    # A comment with YAML-looking text is fine: it stays one string.
    odd = KEY.rsplit(" ", 1)[0] + " me: {x: [1]} # not yaml"
    cfg = yaml.safe_load(user_data(seed(ssh_authorized_keys=[odd])))
    assert cfg["users"][0]["ssh_authorized_keys"] == [odd] and "runcmd" not in cfg


@pytest.mark.parametrize("change, message", [
    ({"instance_id": "a b"}, "instance-id"),
    ({"hostname": "-bad-"}, "invalid hostname"),
    ({"root_password_hash": "hunter2"}, "crypt"),
    ({"ssh_authorized_keys": ["not a key"]}, "OpenSSH public key"),
    ({"nics": [SeedNic("52:54:00:AA:BB:01")]}, "invalid MAC"),
    ({"nics": [SeedNic("52:54:00:aa:bb:01", ["10.0.0.5"])]}, "prefix length"),
    ({"nics": [SeedNic("52:54:00:aa:bb:01", ["10.0.0.300/24"])]}, "does not appear to be"),
    ({"nics": [SeedNic("52:54:00:aa:bb:01", ["10.0.0.5/24"], gateway4="fd00::1")]}, "not an IPv4"),
    ({"nics": [SeedNic("52:54:00:aa:bb:01", ["10.0.0.5/24"], dhcp=True)]}, "not both"),
    ({"nics": [SeedNic("52:54:00:aa:bb:01"), SeedNic("52:54:00:aa:bb:01")]}, "same MAC"),
])
def test_invalid_seeds(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        seed(**change).validate()


def test_iso(tmp_path: Path) -> None:
    if shutil.which("genisoimage") is None or shutil.which("isoinfo") is None:
        pytest.skip("genisoimage is not installed")
    iso = build_seed_iso(seed(), tmp_path / "seed" / "seed.iso")
    info = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in info
    listing = subprocess.run(["isoinfo", "-J", "-f", "-i", str(iso)], capture_output=True, text=True, check=True).stdout
    assert sorted(listing.split()) == ["/meta-data", "/network-config", "/user-data"]
    got = subprocess.run(["isoinfo", "-J", "-x", "/user-data", "-i", str(iso)], capture_output=True, check=True).stdout
    assert got.decode() == user_data(seed())
    assert not (tmp_path / "seed" / "seed.iso.tmp").exists()


def test_routed_nic_gateway_is_on_link_and_timezone_is_set() -> None:
    s = seed(nics=[SeedNic("52:54:00:aa:bb:01", ["192.0.2.5/32"], "169.254.0.1", onlink=True)],
             timezone="Europe/Berlin")
    eth0 = yaml.safe_load(network_config(s))["ethernets"]["eth0"]
    assert eth0["routes"] == [{"to": "0.0.0.0/0", "via": "169.254.0.1", "on-link": True}]
    assert yaml.safe_load(user_data(s))["timezone"] == "Europe/Berlin"


def test_password_of_another_user_creates_that_user_and_keeps_roots_keys() -> None:
    cfg = yaml.safe_load(user_data(seed(password_user="admin")))
    assert cfg["users"] == [{"name": "root", "ssh_authorized_keys": [KEY]},
                            {"name": "admin", "shell": "/bin/bash", "lock_passwd": False, "hashed_passwd": HASH}]
    with pytest.raises(InvalidRequest):
        seed(password_user="Bad User").validate()


def test_content_id_changes_with_the_settings_only() -> None:
    from ctd.instance.vm.seed import content_id
    assert content_id(seed()) == content_id(seed(instance_id="other"))
    assert content_id(seed()) != content_id(seed(hostname="web2"))
    assert content_id(seed()) != content_id(seed(nics=[SeedNic("52:54:00:aa:bb:01", ["10.20.0.6/24"])]))
