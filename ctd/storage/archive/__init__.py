"""Root filesystem tarballs: safe import and export, in the layout OpenVZ and Proxmox templates
use (a tar of the root's *contents*, members named `./etc/hostname`, numeric owners).

import_rootfs(archive, target)   extracts a .tar, .tar.gz, .tar.xz, .tar.zst or .tar.bz2 (the
                                 compression is recognised by its magic bytes, not the file name)
                                 into an empty directory, refusing anything that could write
                                 outside it;
export_rootfs(source, out)       writes a root as such a tarball (zstd, gzip, xz or plain).

What an import refuses (ctd.errors.InvalidRequest naming the member and why; the target is
emptied again, so nothing of the archive is left; the caller removes the target itself):

- absolute member names (`/etc/passwd`) and names with a `..` component (`a/../../x`);
- a member whose parent, as extracted so far, is a symlink or not a directory (the
  `lnk -> /etc` then `lnk/passwd` trick): every path is walked one component at a time with
  openat(O_NOFOLLOW | O_DIRECTORY) from the target's own descriptor, so no extracted symlink is
  ever followed;
- hard links whose target is absolute, has `..`, or is not a member extracted before them;
- a directory replaced by a later member of another type, and member types tar has but a root
  does not need (GNU volume labels, multi-volume continuations ...);
- more file data than fits: members are charged as their headers are read, before their data
  is written, against the free space of the target's filesystem and max_bytes (the quota the
  root will have); a file declaring more bytes than that whole filesystem holds is refused
  even when sparse. Sparse members (GNU tar --sparse, old GNU and PAX formats) count their
  data segments only, and are written segment by segment, seeking over the holes: the cost of
  an import follows the bytes in the archive, not the sizes it declares.

Dropped, never made, and counted ("skipped_devices", and a warning naming the first few):
block and character device nodes, wherever they are (dev/loop0 on a guest's disk reads the
pool's block device; a chroot's dev/ or home/sda no less), and hard links to them. Roots
carry them legitimately (debootstrap's /dev/null ...), so they are not refused: ctd mounts a
private tmpfs on every guest's /dev and makes the few nodes it allows itself.

Kept as they are: symlinks to anywhere (they are resolved inside the container, never by the
import), FIFOs (inert on disk; ctd never opens a guest's files but through guestfs, which
refuses them), hard links inside the root, setuid/setgid bits (a system needs /usr/bin/sudo
setuid; with every path confined to the target there is no "setuid file outside the root"),
numeric owners (uname/gname are ignored: the ids of the archive are the ids of the guest),
modes, mtimes and extended attributes stored the GNU tar / star way (`SCHILY.xattr.NAME`: file
capabilities such as ping's cap_net_raw, ACLs). Owners are only set when running as root.

A truncated or corrupt archive (a compressed stream that stops early or fails its checksum, a
tar that ends inside a member or without its end-of-archive block) raises InvalidRequest
"... is truncated or corrupt: ...".

zstd needs the `zstandard` module (PyPI); gzip, xz and bzip2 come with Python.

The package, one concern a module:

    streams.py    byte streams below tar: sniffing, decompression, the corrupt-stream guard,
                  compression on export, progress
    checks.py     what is checked before a member is written: header sizes, names, space
    extract.py    the extractor (confined writes, device nodes dropped, sparse members)
    importer.py   import_rootfs: the pipeline and how its failures are told
    export.py     export_rootfs: the walk, sparse members, the file renamed into place
"""

from __future__ import annotations

from ctd.storage.archive.export import export_rootfs
from ctd.storage.archive.extract import drop_device_nodes
from ctd.storage.archive.importer import ImportResult, import_rootfs
from ctd.storage.archive.streams import COMPRESSIONS, compression_for

__all__ = ["import_rootfs", "export_rootfs", "compression_for", "drop_device_nodes", "COMPRESSIONS",
           "ImportResult"]
