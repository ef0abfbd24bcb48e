"""The seed applier: a small POSIX sh script ctd installs in the disks it builds for template VMs.

After a guest has run on its disk, ctd never mounts that disk on the host again (the host's ext4
driver would parse a filesystem the tenant controls). Settings changed later reach the guest
through the seed CD-ROM instead: seed.py puts ready-made files under ctd/ on it (the same files
ctd.guest writes into a container), and this script copies them into place at boot when the
seed's instance-id differs from the last one it applied. At every boot it also grows the root
filesystem to the disk's size (`ctctl set --disk`, vm/disks.py) when the seed carries
ctd/grow-root. Debian runs it from a systemd unit before networkd; the busybox template's rcS
runs it before it sources /etc/ctd/network.sh.

The script reads no data as code: every value is a file copied, or a line passed to awk as a
variable; the seed is ctd's own, but quoting holds anyway.
"""

from __future__ import annotations

from pathlib import Path

from ctd import guestfs

SCRIPT_PATH = "/usr/sbin/ctd-seed-apply"
UNIT_NAME = "ctd-seed.service"
STATE_DIR = "/var/lib/ctd-seed"   # instance-id: the seed applied last
SEED_DIR = "ctd"                  # on the ISO, beside cloud-init's meta-data and user-data

SCRIPT = r"""#!/bin/sh
# Installed by ctd: applies the settings on the VM's seed CD-ROM (cidata, directory ctd/) when
# they differ from the ones applied last. 'ctctl set' and 'ctctl clone' rebuild the seed.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
STATE=/var/lib/ctd-seed
MNT=/run/ctd-seed
umask 022

dev=
for _ in 1 2 3 4 5; do   # the CD-ROM's device can show up a moment after early boot
    [ -b /dev/sr0 ] && { dev=/dev/sr0; break; }
    sleep 1
done
[ -n "$dev" ] || { echo "ctd-seed: no seed CD-ROM"; exit 0; }
modprobe isofs 2>/dev/null   # busybox guests have no udev to load it
modprobe virtio_balloon 2>/dev/null   # nor this one: 'ctctl set --ram' on the running VM needs it
mkdir -p "$MNT" || exit 1
mount -t iso9660 -o ro,nosuid,nodev,noexec "$dev" "$MNT" || { rmdir "$MNT"; exit 1; }
trap 'umount "$MNT"; rmdir "$MNT"' EXIT
S="$MNT/ctd"
# At every boot: a root disk ctd built (ext4 on the whole of /dev/vda) takes the space a
# 'ctctl set --disk' gave it. resize2fs grows a mounted ext4 online; nothing to do is quick.
if [ -f "$S/grow-root" ] && grep -q '^/dev/vda / ext4 ' /proc/mounts && command -v resize2fs >/dev/null; then
    resize2fs /dev/vda 2>&1 | tail -n 1
fi
[ -r "$S/instance-id" ] || exit 0
read -r id < "$S/instance-id"
last=
[ -r "$STATE/instance-id" ] && read -r last < "$STATE/instance-id"
[ "$id" = "$last" ] && exit 0

# put NAME DEST MODE: the seed's file NAME written beside DEST, then renamed over it
put() {
    [ -f "$S/$1" ] || return 0
    cp "$S/$1" "$2.ctd-new" && chmod "$3" "$2.ctd-new" && mv -f "$2.ctd-new" "$2"
}
put hostname /etc/hostname 644
put hosts /etc/hosts 644
put resolv.conf /etc/resolv.conf 644
if [ -d /run/systemd/system ]; then   # systemd-networkd reads these when it starts, after us
    mkdir -p /etc/systemd/network
    rm -f /etc/systemd/network/10-ctd-*.network
    for f in "$S"/network/*.network; do
        [ -f "$f" ] && put "network/${f##*/}" "/etc/systemd/network/${f##*/}" 644
    done
else                                  # busybox: rcS sources this after us
    mkdir -p /etc/ctd
    put network.sh /etc/ctd/network.sh 644
fi
if [ -f "$S/authorized_keys" ]; then
    mkdir -p /root/.ssh && chmod 700 /root/.ssh
    put authorized_keys /root/.ssh/authorized_keys 600
fi
if [ -f "$S/passwd" ] && [ -f /etc/shadow ]; then   # USER:HASH, one line
    IFS=: read -r user hash < "$S/passwd"
    # the copy keeps shadow's owner and mode; awk then rewrites its content
    cp -p /etc/shadow /etc/shadow.ctd-new &&
        awk -F: -v OFS=: -v u="$user" -v h="$hash" '$1 == u { $2 = h } { print }' /etc/shadow \
            > /etc/shadow.ctd-new && mv -f /etc/shadow.ctd-new /etc/shadow
fi
if [ -f "$S/timezone" ]; then
    read -r tz < "$S/timezone"
    case "$tz" in
        ""|/*|*..*) ;;
        *) ln -sf "/usr/share/zoneinfo/$tz" /etc/localtime && put timezone /etc/timezone 644 ;;
    esac
fi
# A clone (a new uuid where another was applied before) must not pass for its source: a new
# machine-id and no ssh host keys (the template's first-boot unit makes new ones after us).
mkdir -p "$STATE"
if [ -r "$S/uuid" ]; then
    read -r uuid < "$S/uuid"
    old=
    [ -r "$STATE/uuid" ] && read -r old < "$STATE/uuid"
    if [ -n "$old" ] && [ "$uuid" != "$old" ]; then
        rm -f /etc/ssh/ssh_host_*
        tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id.ctd-new &&
            chmod 444 /etc/machine-id.ctd-new && mv -f /etc/machine-id.ctd-new /etc/machine-id
        echo "ctd-seed: new machine identity (a clone)"
    fi
    echo "$uuid" > "$STATE/uuid.new" && mv -f "$STATE/uuid.new" "$STATE/uuid"
fi
[ -s /etc/hostname ] && hostname -F /etc/hostname 2>/dev/null
echo "$id" > "$STATE/instance-id.new" && mv -f "$STATE/instance-id.new" "$STATE/instance-id"
sync
echo "ctd-seed: applied $id"
"""

UNIT = f"""[Unit]
Description=Apply the settings on ctd's seed CD-ROM
DefaultDependencies=no
After=systemd-remount-fs.service systemd-modules-load.service
Before=sysinit.target systemd-networkd.service network-pre.target ssh.service shutdown.target
Wants=network-pre.target
Conflicts=shutdown.target

[Service]
Type=oneshot
ExecStart={SCRIPT_PATH}
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
"""


def install(rootfs: Path) -> None:
    """The script into a root ctd is making a VM disk of; a systemd unit for it where the root
    boots systemd (the busybox template's rcS runs the script itself when it is there)."""
    guestfs.make_dirs(rootfs, "/usr/sbin")
    guestfs.write_file(rootfs, SCRIPT_PATH, SCRIPT, 0o755)
    if (rootfs / "etc/systemd/system").is_dir() and not (rootfs / "etc/systemd/system").is_symlink():
        guestfs.write_file(rootfs, f"/etc/systemd/system/{UNIT_NAME}", UNIT)
        guestfs.make_dirs(rootfs, "/etc/systemd/system/sysinit.target.wants")
        guestfs.symlink(rootfs, f"/etc/systemd/system/sysinit.target.wants/{UNIT_NAME}", f"../{UNIT_NAME}")
