"""Per-container setup written from the host into the guest's files (OpenVZ's vzctl set
--hostname --ipadd --nameserver --userpasswd): hostname, hosts, network, DNS, passwords, ssh
keys, timezone, machine-id. Every write goes through ctd.guestfs, which never follows a
tenant's symlink out of the root.
"""

from __future__ import annotations

import crypt  # deprecated in 3.11, present until 3.13; the guest's shadow wants crypt(3)
import ipaddress
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

from ctd import guestfs
from ctd.errors import InvalidRequest, OperationFailed
from ctd.network.netlink import InsideNic

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_TZ = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}$")
# a crypt(3) hash ($id$[params$]salt$hash): one line, no ':' (it lands in /etc/shadow)
_HASH = re.compile(r"^\$[A-Za-z0-9]{1,8}\$[A-Za-z0-9./$=,+-]{1,1000}$")
_KEY = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-\S+) [A-Za-z0-9+/=]+( [^\n]*)?$")


@dataclass
class GuestSettings:
    hostname: str
    nics: list[InsideNic] = field(default_factory=list)
    nameservers: list[str] = field(default_factory=list)
    network_style: str = "none"
    ssh_keys: list[str] = field(default_factory=list)
    timezone: str | None = None


def check_userpasswd(value: object) -> tuple[str, str]:
    if not isinstance(value, str) or ":" not in value:
        raise InvalidRequest("userpasswd must look like USER:PASSWORD")
    user, password = value.split(":", 1)
    if not _USER.fullmatch(user):
        raise InvalidRequest(f"invalid user name {user!r} in userpasswd")
    if not password or "\n" in password or "\0" in password:
        raise InvalidRequest("the password in userpasswd must be non-empty and on one line")
    return user, password


def check_user(value: object) -> str:
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise InvalidRequest(f"invalid user name {value!r}")
    return value


def check_password_hash(value: object) -> str:
    """A crypt(3) hash ctd may write into a guest's /etc/shadow (never a clear text)."""
    if not is_password_hash(value):
        raise InvalidRequest("invalid password hash: expected a crypt(3) hash like $6$salt$…")
    return value


def check_ssh_key(value: object) -> str:
    if not isinstance(value, str) or not _KEY.match(value.strip()):
        raise InvalidRequest("ssh key must be one public key line, like 'ssh-ed25519 AAAA… comment'")
    return value.strip()


def check_timezone(value: object) -> str:
    if not isinstance(value, str) or not _TZ.match(value) or ".." in value:
        raise InvalidRequest(f"invalid timezone {value!r}: use a zone like Europe/Berlin or UTC")
    return value


def apply(rootfs: Path, settings: GuestSettings) -> None:
    """Write everything the settings say into the guest (idempotent)."""
    try:
        _apply(rootfs, settings)
    except OSError as exc:
        # e.g. the tenant made /root/.ssh a symlink to a place that does not exist in its root
        raise OperationFailed(f"writing the guest's settings failed at {_guest_path(exc)}: "
                              f"{os.strerror(exc.errno or 0)}; check that path inside the container") from None


def _guest_path(exc: OSError) -> str:
    text = str(exc)
    return text[text.find("('") + 2:text.find("')")] if "('" in text else (exc.filename or "?")


def new_identity(rootfs: Path) -> None:
    """A clone must not pass for its source: a new machine-id, and no ssh host keys (the
    template's first-boot unit makes new ones), or every clone would share the source's."""
    guestfs.write_file(rootfs, "/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    guestfs.remove_matching(rootfs, "/etc/ssh", "ssh_host_")


def _apply(rootfs: Path, settings: GuestSettings) -> None:
    name = settings.hostname
    guestfs.write_file(rootfs, "/etc/hostname", f"{name}\n")
    short = name.split(".")[0]
    names = name if short == name else f"{name} {short}"
    guestfs.write_file(rootfs, "/etc/hosts",
                       f"127.0.0.1\tlocalhost\n127.0.1.1\t{names}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    machine_id = (guestfs.read_file(rootfs, "/etc/machine-id") or "").strip()
    if not re.fullmatch(r"[0-9a-f]{32}", machine_id):
        guestfs.write_file(rootfs, "/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    if settings.nameservers:
        guestfs.write_file(rootfs, "/etc/resolv.conf", "".join(f"nameserver {a}\n" for a in settings.nameservers))
    if settings.network_style == "networkd":
        write_networkd(rootfs, settings.nics, settings.nameservers)
    elif settings.network_style == "ip":
        write_ip_script(rootfs, settings.nics)
    if settings.ssh_keys:
        guestfs.make_dirs(rootfs, "/root/.ssh", 0o700)
        guestfs.write_file(rootfs, "/root/.ssh/authorized_keys", "".join(k + "\n" for k in settings.ssh_keys), 0o600)
    if settings.timezone:
        guestfs.symlink(rootfs, "/etc/localtime", f"/usr/share/zoneinfo/{settings.timezone}")
        guestfs.write_file(rootfs, "/etc/timezone", settings.timezone + "\n")


def write_networkd(rootfs: Path, nics: list[InsideNic], nameservers: list[str]) -> None:
    guestfs.make_dirs(rootfs, "/etc/systemd/network")
    for nic in nics:
        lines = ["# Written by ctd from the container's settings; 'ctctl set' rewrites it.",
                 "[Match]", f"Name={nic.name}", "", "[Network]", "LinkLocalAddressing=ipv6",
                 "IPv6AcceptRA=no"]
        v6 = [a for a in nic.addresses if ipaddress.ip_interface(a).version == 6]
        lines += [f"Address={a}" for a in nic.addresses if a not in v6]
        lines += [f"DNS={a}" for a in nameservers]
        routes = []
        for gateway in (nic.gateway4, nic.gateway6):
            if not gateway:
                continue
            if nic.onlink_gateway:
                routes += ["", "[Route]", f"Gateway={gateway}", "GatewayOnLink=yes"]
            else:
                lines.append(f"Gateway={gateway}")
        # ctd's IPAM keeps IPv6 addresses unique: no duplicate detection holding them ~1 s
        for address in v6:
            lines += ["", "[Address]", f"Address={address}", "DuplicateAddressDetection=none"]
        guestfs.write_file(rootfs, f"/etc/systemd/network/10-ctd-{nic.name}.network", "\n".join(lines + routes) + "\n")


def write_ip_script(rootfs: Path, nics: list[InsideNic]) -> None:
    """/etc/ctd/network.sh: `ip` commands (busybox's) for the NICs, which the busybox template's
    rcS sources. ctd has addressed the NICs before init runs, so at boot they change nothing;
    they say what the guest's network is and put it back after an `ip addr flush`."""
    lines = ["# Written by ctd from the container's settings; 'ctctl set' rewrites it."]
    for nic in nics:
        lines.append(f"ip link set {nic.name} up")
        for cidr in nic.addresses:
            family = "-6 " if ipaddress.ip_interface(cidr).version == 6 else ""
            lines.append(f"ip {family}addr add {cidr} dev {nic.name} 2>/dev/null")
        for gateway, family in ((nic.gateway4, ""), (nic.gateway6, "-6 ")):
            if gateway:
                if nic.onlink_gateway:
                    lines.append(f"ip {family}route add {gateway} dev {nic.name} 2>/dev/null")
                lines.append(f"ip {family}route replace default via {gateway} dev {nic.name}")
    guestfs.make_dirs(rootfs, "/etc/ctd")
    guestfs.write_file(rootfs, "/etc/ctd/network.sh", "\n".join(lines) + "\n")


def hash_password(password: str) -> str:
    """SHA-512 crypt(3), what Debian's shadow and cloud-init's hashed_passwd take."""
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def check_guest_has_user(rootfs: Path, user: str) -> None:
    """InvalidRequest unless the guest's /etc/shadow has user (before a password is set)."""
    shadow = guestfs.read_file(rootfs, "/etc/shadow")
    if shadow is None:
        raise InvalidRequest("the guest has no /etc/shadow")
    if not any(line.split(":", 1)[0] == user for line in shadow.splitlines()):
        raise InvalidRequest(f"the guest has no user {user!r}")


def set_password(rootfs: Path, user: str, password: str) -> None:
    """Replace user's hash in the guest's /etc/shadow; the clear text goes nowhere else."""
    set_password_hash(rootfs, user, hash_password(password))


def password_field(rootfs: Path, user: str) -> str | None:
    """user's password field in the guest's /etc/shadow (a hash, or '*'/'!…' when locked);
    None if the guest has no such user or a shadow ctd will not read (a tenant's file)."""
    try:
        shadow = guestfs.read_file(rootfs, "/etc/shadow")
    except (InvalidRequest, OSError):  # too big, or a path that leads nowhere
        return None
    for line in (shadow or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 2 and fields[0] == user:
            return fields[1]
    return None


def is_password_hash(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _HASH.fullmatch(value) is not None


def set_password_hash(rootfs: Path, user: str, hashed: str) -> None:
    shadow = guestfs.read_file(rootfs, "/etc/shadow")
    if shadow is None:
        raise InvalidRequest("the guest has no /etc/shadow")
    lines, found = [], False
    for line in shadow.splitlines():
        fields = line.split(":")
        if fields and fields[0] == user and len(fields) >= 2:
            fields[1] = hashed
            line, found = ":".join(fields), True
        lines.append(line)
    if not found:
        raise InvalidRequest(f"the guest has no user {user!r}")
    guestfs.write_file(rootfs, "/etc/shadow", "\n".join(lines) + "\n", 0o640)


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
