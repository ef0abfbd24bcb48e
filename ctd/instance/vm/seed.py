"""A cloud-init NoCloud seed: an ISO labelled 'cidata' with meta-data, user-data and
network-config, attached as a CD-ROM (VmSpec.seed_iso); the admin's user-data is merged after
ctd's and vendor-data added as it is (userdata.py).

The three files are YAML; they are written as JSON, which YAML parsers read as it is, so no
YAML library is needed and no value can break out of its quoting.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ctd.errors import InvalidRequest, NotFound, OperationFailed
from ctd.instance.vm.userdata import merged
from ctd.validate import hostname as check_hostname

VOLUME_LABEL = "cidata"    # what cloud-init's NoCloud datasource looks for
ISO_TOOL = "genisoimage"   # Debian package genisoimage (xorriso -as mkisofs takes the same flags)

_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
# crypt(3) hashes cloud-init passes to chpasswd -e / useradd -p: SHA-512, SHA-256, yescrypt, bcrypt.
_HASH = re.compile(r"^\$(6|5|y|2[aby])\$[./A-Za-z0-9$=,]+$")
_KEY = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
                  r"@openssh\.com) [A-Za-z0-9+/=]+( [^\n\r]*)?$")


@dataclass(frozen=True)
class SeedNic:
    mac: str                                          # matches the VM's NIC (VmSpec.nics)
    addresses: list[str] = field(default_factory=list)  # "10.0.0.5/24", "fd00::5/64"
    gateway4: str | None = None
    gateway6: str | None = None
    dns: list[str] = field(default_factory=list)
    dhcp: bool = False                                # no addresses: ask DHCP instead
    onlink: bool = False      # routed NICs: the gateway is on no subnet of the guest's


@dataclass(frozen=True)
class Seed:
    instance_id: str         # a new id makes cloud-init run its per-instance modules again
    hostname: str
    root_password_hash: str | None = None    # crypt(3) hash, never a clear-text password
    ssh_authorized_keys: list[str] = field(default_factory=list)
    nics: list[SeedNic] = field(default_factory=list)
    password_user: str = "root"              # whose password root_password_hash is
    timezone: str | None = None
    admin_user_data: str | None = None       # the admin's, after ctd's (userdata.py: precedence)
    vendor_data: str | None = None

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", self.instance_id or ""):
            raise InvalidRequest(f"invalid cloud-init instance-id {self.instance_id!r}")
        check_hostname(self.hostname)
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", self.password_user):
            raise InvalidRequest(f"invalid user name {self.password_user!r}")
        if self.root_password_hash is not None and not _HASH.fullmatch(self.root_password_hash):
            raise InvalidRequest("root password must be a crypt(3) hash ($6$…, $5$…, $y$…, $2b$…), "
                                 "e.g. from `openssl passwd -6`")
        for key in self.ssh_authorized_keys:
            if not _KEY.fullmatch(key.strip()):
                raise InvalidRequest(f"not an OpenSSH public key line: {key[:40]!r}…")
        macs = [n.mac for n in self.nics]
        if len(set(macs)) != len(macs):
            raise InvalidRequest("two seed NICs have the same MAC")
        for n in self.nics:
            _check_nic(n)


def _check_nic(n: SeedNic) -> None:
    if not _MAC.fullmatch(n.mac):
        raise InvalidRequest(f"invalid MAC {n.mac!r}: use lowercase aa:bb:cc:dd:ee:ff")
    try:
        nets = [ipaddress.ip_interface(a) for a in n.addresses]
        for gw, version in ((n.gateway4, 4), (n.gateway6, 6)):
            if gw is not None and ipaddress.ip_address(gw).version != version:
                raise InvalidRequest(f"gateway{version} {gw} is not an IPv{version} address")
        for d in n.dns:
            ipaddress.ip_address(d)
    except ValueError as e:
        raise InvalidRequest(f"NIC {n.mac}: {e}") from None
    for a in n.addresses:
        if "/" not in a:
            raise InvalidRequest(f"NIC {n.mac}: address {a} needs a prefix length (10.0.0.5/24)")
    if n.dhcp and nets:
        raise InvalidRequest(f"NIC {n.mac}: either static addresses or DHCP, not both")


def _yaml(data: object) -> str:
    return json.dumps(data, indent=2) + "\n"


def meta_data(seed: Seed) -> str:
    return _yaml({"instance-id": seed.instance_id, "local-hostname": seed.hostname})


def user_data(seed: Seed) -> str:
    root: dict[str, object] = {"name": "root"}
    cfg: dict[str, object] = {
        "hostname": seed.hostname.split(".")[0],
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        # A VPS is administered as root, as ctd's containers are.
        "disable_root": False,
        "users": [root],
    }
    if "." in seed.hostname:
        cfg["fqdn"] = seed.hostname
    if seed.root_password_hash:
        login: dict[str, object] = (root if seed.password_user == "root"
                                    else {"name": seed.password_user, "shell": "/bin/bash"})
        login.update({"lock_passwd": False, "hashed_passwd": seed.root_password_hash})
        if login is not root:
            cfg["users"] = [root, login]
        cfg["chpasswd"] = {"expire": False}
        cfg["ssh_pwauth"] = True
    if seed.ssh_authorized_keys:
        root["ssh_authorized_keys"] = [k.strip() for k in seed.ssh_authorized_keys]
    if seed.timezone:
        cfg["timezone"] = seed.timezone
    return merged("#cloud-config\n" + _yaml(cfg), seed.admin_user_data)


def network_config(seed: Seed) -> str:
    ethernets: dict[str, object] = {}
    for i, n in enumerate(seed.nics):
        eth: dict[str, object] = {"match": {"macaddress": n.mac}, "set-name": f"eth{i}"}
        if n.dhcp:
            eth.update({"dhcp4": True, "dhcp6": True})
        else:
            eth.update({"dhcp4": False, "dhcp6": False, "addresses": list(n.addresses)})
            # 'to: default' is newer netplan only; explicit prefixes work with every renderer.
            onlink = {"on-link": True} if n.onlink else {}
            routes = [{"to": "0.0.0.0/0", "via": n.gateway4, **onlink}] if n.gateway4 else []
            routes += [{"to": "::/0", "via": n.gateway6, **onlink}] if n.gateway6 else []
            if routes:
                eth["routes"] = routes
        if n.dns:
            eth["nameservers"] = {"addresses": list(n.dns)}
        ethernets[f"eth{i}"] = eth
    return _yaml({"version": 2, "ethernets": ethernets})


def content_id(seed: Seed) -> str:
    """A short digest of what the seed says (its instance-id aside): an instance-id built with
    it changes exactly when the settings do, so cloud-init applies them again then, and only then."""
    text = "\0".join([seed.hostname, user_data(seed), network_config(seed), seed.vendor_data or ""])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_seed_iso(seed: Seed, dest: Path, tool: str = ISO_TOOL, files: dict[str, str] | None = None) -> Path:
    """Write the NoCloud ISO to dest (atomically) and return dest. files: more files for it, by
    relative path (ctd's in-guest seed applier reads its own under ctd/)."""
    seed.validate()
    if shutil.which(tool) is None:
        raise NotFound(f"{tool} is not installed (Debian: apt-get install genisoimage)")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ctd-seed-") as tmp:
        src = Path(tmp)
        (src / "meta-data").write_text(meta_data(seed))
        (src / "user-data").write_text(user_data(seed))
        (src / "network-config").write_text(network_config(seed))
        if seed.vendor_data is not None:
            (src / "vendor-data").write_text(seed.vendor_data)
        for rel, text in (files or {}).items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise InvalidRequest(f"seed file {rel!r} is outside the seed")
            path = src / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        out = dest.with_name(dest.name + ".tmp")
        r = subprocess.run([tool, "-quiet", "-output", str(out), "-volid", VOLUME_LABEL, "-joliet",
                            "-rock", str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            out.unlink(missing_ok=True)
            raise OperationFailed(f"{tool} could not make the cloud-init seed: {r.stderr.strip()}")
        out.replace(dest)
    return dest
