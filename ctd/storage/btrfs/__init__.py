"""The btrfs driver: templates are read-only subvolumes, instance roots writable snapshots.

    templates/NAME/rootfs            read-only subvolume (built in a staging dir's fresh subvolume)
    instances/NAME/rootfs            writable snapshot of the template's rootfs: create copies nothing
    instances/NAME/snapshots/SNAP    read-only snapshots of rootfs
    instances/NAME/.rootfs-new|old   only while a rollback swaps roots

Subvolumes are made, listed and deleted with libbtrfsutil (`btrfsutil`, PyPI 6.10). It has no
qgroup calls, so quota goes through the `btrfs` command (`quota enable`, `qgroup limit`,
`qgroup destroy`); usage and limits are read from /sys/fs/btrfs/<fsid>/qgroups/0_<id>/ when
the kernel has it, else from `btrfs qgroup show --raw`. Limits are on *referenced* bytes: all
the data an instance's root can see, template blocks shared with other instances included —
what `df` inside the instance would say, not what the instance alone costs the pool.

The package:

    lib.py       btrfsutil (None when missing), the fs id, the btrfs command, errors()
    driver.py    BtrfsStorage: subvolumes for templates, instances, snapshots
    quota.py     QgroupQuota, BtrfsStorage's qgroup limits, usage and qgroup cleanup
"""

from __future__ import annotations

from ctd.storage.btrfs.driver import BtrfsStorage
from ctd.storage.btrfs.lib import IMPORT_ERROR, btrfsutil, fs_uuid, is_btrfs

__all__ = ["BtrfsStorage", "IMPORT_ERROR", "btrfsutil", "fs_uuid", "is_btrfs"]
