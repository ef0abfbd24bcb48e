"""Backup chains: a full backup and the increments made against it, one after the other.

Making one (ctd/instance/backups.py with create_backup's parent and keep): the first backup of
a chain is full; each next one is
`btrfs send -p` against the read-only snapshot the previous one was sent from, which the
instance keeps as instances/NAME/backup-parent-ID (ID: the previous backup's id; it moves with a
rename and goes with a destroy). When the backup is written, the new snapshot takes the old
one's place. Only the chain's last snapshot is kept: the pool holds the data the instance
changed since its last backup twice, no more.

Restoring one (resolve_chain, then restore.py): the last file's header names its parent by id and
plain file name in the same directory; the parents are read back to the full backup and each
link checked: the file found must carry the id the child names, be of the same instance name,
and be older. A file that is missing, of another chain or a loop is refused before anything is
received. Then the streams are received oldest first, each one checked (sendstream.StreamCheck)
to name exactly the subvolume the previous stream made as its parent, and to clone only from
itself or that parent. A tenant who can write files into the backup directory can therefore
swap a link only for a file whose stream carries the same subvolume identity — a backup of the
same chain.
"""

from __future__ import annotations

from pathlib import Path

from ctd.errors import InvalidRequest
from ctd.storage.backup.format import BackupHeader, Parent
from ctd.storage.backup.reader import read_backup_header
from ctd.storage.base import StorageDriver

KEPT_PREFIX = "backup-parent-"
MAX_CHAIN = 1000


def kept_snapshot(storage: StorageDriver, name: str, backup_id: str) -> Path:
    """Where the snapshot backup backup_id of instance name was sent from is kept."""
    return storage.instance_path(name) / f"{KEPT_PREFIX}{backup_id}"


def kept_snapshots(storage: StorageDriver, name: str) -> list[Path]:
    base = storage.instance_path(name)
    return sorted(p for p in base.glob(f"{KEPT_PREFIX}*")) if base.is_dir() else []


def parent_for(storage: StorageDriver, name: str, last_id: str | None, last_file: Path | None) -> Parent | None:
    """The parent of the next backup of the chain: the last backup, when both its file and its
    kept snapshot are still there; None: the next one is full."""
    if last_id is None or last_file is None or not last_file.is_file():
        return None
    snap = kept_snapshot(storage, name, last_id)
    if not snap.is_dir():
        return None
    return Parent(id=last_id, file=last_file.name, snapshot=snap)


def resolve_chain(last: Path, header: BackupHeader) -> list[tuple[Path, BackupHeader]]:
    """The files of last's chain, full backup first, each link checked (InvalidRequest)."""
    chain = [(last, header)]
    seen = {str(last.resolve())}
    while header.get("kind") == "incremental":
        if len(chain) > MAX_CHAIN:
            raise InvalidRequest(f"{last}: its chain is longer than {MAX_CHAIN} backups")
        parent = header["parent"]
        path = last.parent / parent["file"]   # a plain name (validate_header): never another directory
        if str(path.resolve()) in seen:
            raise InvalidRequest(f"{last}: its chain loops back to {path.name}")
        seen.add(str(path.resolve()))
        if not path.is_file():
            raise InvalidRequest(f"{last}: its parent backup {path.name} (id {parent['id']}) is missing from "
                                 f"{last.parent}; an incremental backup restores only with its whole chain")
        parent_header = read_backup_header(path)
        if parent_header.get("id") != parent["id"]:
            raise InvalidRequest(f"{last}: {path.name} is not its parent backup (the chain names id "
                                 f"{parent['id']}, the file carries {parent_header.get('id')})")
        if parent_header.get("name") != header.get("name") or parent_header.get("driver") != "btrfs-send":
            raise InvalidRequest(f"{last}: {path.name} is a backup of another instance or driver")
        chain.append((path, parent_header))
        header = parent_header
    chain.reverse()
    return chain
