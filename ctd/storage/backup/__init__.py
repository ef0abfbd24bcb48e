"""Backups of an instance's root that restore on another ctd host.

A backup is an uncompressed tar (read front to back, so it can come from a pipe) of two members:

    ctd-backup.json     {"format": "ctd-backup", "version": 1, "driver": "btrfs-send" | "tar",
                         "member": ..., "name": ..., "snapshot": ..., "created": ..., "meta": {...},
                         "id": ..., "kind": "full" | "incremental", "parent": {"id", "file"}}
    rootfs.btrfs        driver "btrfs-send": the output of `btrfs send` of a read-only snapshot
 or rootfs.tar.zst      driver "tar": archive.export_rootfs of the root (zstd)

create_backup picks btrfs-send when the root is a btrfs subvolume (every block, owner, xattr
and hole exactly as on disk, fast), tar otherwise or on request (driver="tar": portable to a
host on the dir driver). Without a snapshot name it takes a temporary read-only snapshot
(STORAGE/.backup-NAME-XXXX, crash-consistent, deleted afterwards); on the dir driver it reads
the live tree, so stop the instance or name a snapshot for a consistent copy.

restore_backup builds the new instance aside (STORAGE/.restore-NAME-XXXX) and renames it to
instances/NAME only when complete: a failure at any point removes everything it made, and a
crash leaves only a dot-directory that discard_partial() removes at the next start.

A btrfs stream comes from outside, so it is checked as it flows into `btrfs receive --chroot`:
it must be one full subvolume whose `clone` commands only clone from itself (never data of
another subvolume on the pool), and it must end with its end command. An incremental backup
(`btrfs send -p`, chain.py) restores only with its chain, each link checked: its stream must
name exactly the subvolume of the previous link as its parent (a parent looked up among this
host's subvolumes is never accepted) and clone only from itself or that parent. Its file data (write,
fallocate) must fit the pool's free space and the disk space limit in the backup's meta, and no
file may be truncated to more than the whole pool.

Device nodes are dropped from every restore, as from template imports (ctd makes each guest's
/dev itself). In a btrfs stream each mknod command is rewritten, before btrfs receive sees it,
into a mknod of an empty regular file tagged with an xattr holding a per-restore nonce: no
device node exists on disk at any moment (btrfs receive runs as host root and would otherwise
open such a node for a later write command: a crafted stream wrote the host's block device
that way), the commands that follow (chmod, rename, link, write) act on a plain file, and
after the receive every name of a tagged file (hard links too) is removed from the writable
copy, in the restore's 0700 staging directory, before it becomes the instance's root. FIFOs
and sockets are kept (inert on disk; ctd never opens a guest's files but through guestfs). A
btrfs-send backup needs btrfs storage to restore: on the dir driver it is refused (make the
backup with driver "tar" for such hosts).

Owners, modes, setuid bits and file capabilities are restored as they were: they are the
guest's ids. A restored root lives under STORAGE/instances/NAME (0700), so no host user can
reach a setuid file in it; inside an unprivileged container uid 0 is the container's base uid.
Only a privileged container runs such a file as host root, as it runs anything it holds.

The package, one concern a module:

    format.py      the file's layout, its header type and check, tar header blocks
    writer.py      create_backup
    reader.py      reading the outer tar and its header (read_backup_header)
    sendstream.py  the btrfs send stream check and its mknod rewriting
    btrfs_io.py    btrfs send / receive and the placeholders' removal
    restore.py     restore_backup, discard_partial
    chain.py       incremental chains: the kept snapshot, the next parent, resolve_chain
"""

from __future__ import annotations

from ctd.storage.backup.format import FORMAT, VERSION, BackupHeader, BackupMeta, NicMeta, Parent, validate_header
from ctd.storage.backup.reader import read_backup_header
from ctd.storage.backup.restore import discard_partial, restore_backup
from ctd.storage.backup.writer import create_backup

__all__ = ["create_backup", "restore_backup", "read_backup_header", "validate_header",
           "discard_partial", "FORMAT", "VERSION", "BackupHeader", "BackupMeta",
           "NicMeta", "Parent"]
