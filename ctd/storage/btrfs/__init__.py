"""The btrfs driver: templates are read-only subvolumes, instance roots writable snapshots.

    templates/NAME/rootfs            read-only subvolume (built in a staging dir's fresh subvolume)
    instances/NAME/rootfs            writable snapshot of the template's rootfs: create copies nothing
    instances/NAME/snapshots/SNAP    read-only snapshots of rootfs
    instances/NAME/.rootfs-new|old   only while a rollback swaps roots

Subvolumes are made, listed and deleted with libbtrfsutil (`btrfsutil`, PyPI 6.10). It has no
qgroup calls, so quota goes through the `btrfs` command (`quota enable`, `qgroup limit`,
`qgroup destroy`); usage and limits are read from /sys/fs/btrfs/<fsid>/qgroups/0_<id>/ when
the kernel has it, else from `btrfs qgroup show --raw`. Limits are on *referenced* bytes. With
full qgroups (the default) that is all the data the instance's root can see, template blocks
shared with other instances included; with simple quotas (opt-in, ctd.toml quota_mode, new
pools on Linux >= 6.7, enabled through the ioctl: btrfs-progs 6.2 cannot) only what the root
wrote (quota.py says why that is opt-in).

The package:

    lib.py       btrfsutil (None when missing), the fs id, the btrfs command, errors()
    driver.py    BtrfsStorage: subvolumes for templates, instances, snapshots
    quota.py     QgroupQuota, BtrfsStorage's qgroup limits, usage and qgroup cleanup
"""

from __future__ import annotations

from ctd.storage.btrfs.driver import BtrfsStorage
from ctd.storage.btrfs.lib import IMPORT_ERROR, btrfsutil, fs_uuid, is_btrfs

__all__ = ["BtrfsStorage", "IMPORT_ERROR", "btrfsutil", "fs_uuid", "is_btrfs"]
