"""A Vagrant box (provider "ctd") from a template tarball ctd exported.

The box is a plain tar of metadata.json ({"provider": "ctd"}), rootfs.tar.gz and a small
Vagrantfile. The rootfs is the template's, streamed member by member and made Vagrant-ready on
the way: a `vagrant` user (uid/gid 1000, shell /bin/bash, password locked) in passwd, shadow,
group (also in sudo) and gshadow, `/etc/sudoers.d/vagrant` (NOPASSWD, 0440) and
`/home/vagrant/.ssh/authorized_keys` holding Vagrant's well-known insecure public key, which
Vagrant replaces with a key of the machine's own at the first `vagrant up` (config.ssh.insert_key).

Everything here reads a tarball ctd wrote from a template, which a tenant may have made from
its own instance (`template create --from`): the members are copied, never extracted, so their
names, links and owners cannot touch this host; a template that already has a uid or gid 1000 or
a `vagrant` user is refused with a clear message instead of being given a second one.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

UID = GID = 1000
# Vagrant's published insecure key pair (keys/vagrant.pub in Vagrant's sources): public by design.
INSECURE_KEY = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct"
    "1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUec"
    "p4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXz"
    "cWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key\n")
BOX_VAGRANTFILE = """# Defaults of a ctd box (made by ctctl template export --vagrant-box)
Vagrant.configure("2") do |config|
{guest}  config.vm.provider :ctd do |ctd|
  end
end
"""
# os-release ID -> Vagrant's guest plugin. The box names its guest so Vagrant does not detect it
# over ssh at each `up` (its synced-folder step asks the guest; detection is ~40 probes: 3-4 s).
GUESTS = {"debian": "debian", "ubuntu": "ubuntu", "alpine": "alpine", "fedora": "fedora", "centos": "centos",
          "rhel": "redhat", "rocky": "rocky", "almalinux": "alma", "arch": "arch", "gentoo": "gentoo",
          "opensuse-leap": "suse", "opensuse-tumbleweed": "suse", "sles": "suse", "amzn": "amazon"}
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
# members a Vagrant-ready root must not take from the template (made anew below)
OWN = {"etc/sudoers.d/vagrant", "home/vagrant", "home/vagrant/.ssh", "home/vagrant/.ssh/authorized_keys"}


class BoxError(Exception):
    """The template cannot become a box (the message says why)."""


@dataclass
class Seen:
    passwd: bool = False
    group: bool = False
    guest: str | None = None   # Vagrant's guest name, from os-release's ID


def _guest(text: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ID":
            return GUESTS.get(value.strip().strip("\"'").lower())
    return None


def _norm(name: str) -> str:
    return name[2:] if name.startswith("./") else name.lstrip("/")


def _add_user(path: str, text: str, seen: Seen) -> str:
    """The account files with the vagrant user (refused if the id or the name is taken)."""
    rows = [line.split(":") for line in text.splitlines() if line]
    if path in ("etc/passwd", "etc/group"):
        for row in rows:
            if row[0] == "vagrant" or (len(row) > 2 and row[2] == str(UID)):
                raise BoxError(f"the template's /{path} has a vagrant user or id {UID} already ({row[0]}); "
                               "make the box from a template without one")
    if path == "etc/passwd":
        seen.passwd = True
        rows.append(["vagrant", "x", str(UID), str(GID), "vagrant", "/home/vagrant", "/bin/bash"])
    elif path == "etc/shadow":
        rows.append(["vagrant", "*", "19000", "0", "99999", "7", "", "", ""])
    elif path == "etc/group":
        seen.group = True
        for row in rows:
            if row[0] == "sudo" and len(row) == 4:
                row[3] = ",".join([m for m in row[3].split(",") if m] + ["vagrant"])
        rows.append(["vagrant", "x", str(GID), ""])
    elif path == "etc/gshadow":
        rows.append(["vagrant", "!", "", ""])
    return "".join(":".join(r) + "\n" for r in rows)


def _member(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.size, info.mtime = kind, mode, uid, gid, size, int(time.time())
    return info


def _add_file(out: tarfile.TarFile, name: str, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    out.addfile(_member(name, tarfile.REGTYPE, mode, uid, gid, len(data)), io.BytesIO(data))


def vagrant_rootfs(source: IO[bytes], target: IO[bytes]) -> str | None:
    """Copy the rootfs tarball source (gzip) into target (gzip) with the vagrant setup; the
    Vagrant guest the rootfs's os-release names (None: not one of GUESTS)."""
    seen = Seen()
    # gzip level 1: the box is written once per export, its size matters less than the wait
    with tarfile.open(fileobj=source, mode="r|gz") as src, \
            gzip.GzipFile(fileobj=target, mode="wb", compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as out:
        for info in src:
            path = _norm(info.name)
            if path in OWN:
                continue
            # the reader expands GNU sparse members: write them as plain files
            info.pax_headers = {k: v for k, v in info.pax_headers.items() if not k.startswith("GNU.sparse")}
            if path in ("etc/passwd", "etc/shadow", "etc/group", "etc/gshadow") and info.isfile():
                handle = src.extractfile(info)
                assert handle is not None
                data = _add_user(path, handle.read().decode(), seen).encode()
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
            elif path in OS_RELEASE and info.isfile() and info.size < 65536:
                handle = src.extractfile(info)
                assert handle is not None
                data = handle.read()
                seen.guest = seen.guest or _guest(data.decode(errors="replace"))
                out.addfile(info, io.BytesIO(data))
            elif info.isfile():
                out.addfile(info, src.extractfile(info))
            else:
                out.addfile(info)
        if not (seen.passwd and seen.group):
            raise BoxError("the template has no /etc/passwd or /etc/group: not a Linux root filesystem")
        _add_file(out, "./etc/sudoers.d/vagrant", b"vagrant ALL=(ALL) NOPASSWD:ALL\n", 0o440)
        out.addfile(_member("./home/vagrant", tarfile.DIRTYPE, 0o755, UID, GID))
        out.addfile(_member("./home/vagrant/.ssh", tarfile.DIRTYPE, 0o700, UID, GID))
        _add_file(out, "./home/vagrant/.ssh/authorized_keys", INSECURE_KEY.encode(), 0o600, UID, GID)
    return seen.guest


def write_box(rootfs: Path, box: Path, template: str) -> int:
    """box: a tar of metadata.json, the Vagrant-ready rootfs.tar.gz and a Vagrantfile; its size.
    Written aside and renamed into place (never a half box under the name)."""
    part = box.with_name(f".{box.name}.part")
    ready = box.with_name(f".{box.name}.rootfs.tar.gz")
    try:
        with rootfs.open("rb") as source, ready.open("wb") as target:
            guest = vagrant_rootfs(source, target)
        meta = json.dumps({"provider": "ctd", "format": "ctd-rootfs", "template": template}).encode() + b"\n"
        vagrantfile = BOX_VAGRANTFILE.format(guest=f"  config.vm.guest = :{guest}\n" if guest else "")
        with tarfile.open(part, "w") as out:
            _add_file(out, "metadata.json", meta, 0o644)
            _add_file(out, "Vagrantfile", vagrantfile.encode(), 0o644)
            out.add(str(ready), "rootfs.tar.gz")
        part.replace(box)
    finally:
        ready.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    return box.stat().st_size
