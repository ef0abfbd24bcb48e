"""Device nodes have no place in a template: ctd builds every container's /dev itself, and a
node left in the tree (mmdebstrap leaves dev/console, c 5:1, 0666: the host's console) is one
more way to a host device should anything else give way (nodev on the root, the device
allow-list)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def strip_device_nodes(root: Path) -> list[str]:
    """Remove every character and block device node below root (symlinks are not followed,
    nothing else is touched). Returns their paths, relative to root."""
    removed: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + dirnames:  # a node is never a directory; listed anyway for safety
            path = os.path.join(dirpath, name)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                os.unlink(path)
                removed.append(os.path.relpath(path, root))
    return sorted(removed)
