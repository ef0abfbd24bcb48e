"""How an instance is shown: its view (GET /1.0/instances/NAME, ctctl status), the brief answer of
a state change, and the figures a view reads from the kernel.

A view has two parts:
- `stored`: what the state database holds (the row, its NICs, its backup schedule), read on the
  event loop's thread (StateDB is used from there only);
- `live`: what the kernel and the drivers say now (cgroup usage, NIC counters, disk use, the
  cgroup directories, console and guest state), which reads files only and so may run in a
  thread: the list cache (listing.py) computes it there for every instance, off the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

from ctd import limits as limits_mod
from ctd.config import DaemonConfig
from ctd.errors import CtdError
from ctd.instance import admin
from ctd.instance.backups import BackupChains
from ctd.instance.kinds import Kinds
from ctd.network.manager import NetworkManager
from ctd.network.netlink import link_stats
from ctd.network.plumbing import nic_counters
from ctd.state import InstanceRecord, NicRecord, PowerState
from ctd.storage.base import StorageDriver

ALIVE = (PowerState.RUNNING, PowerState.SUSPENDED)
DISK_CACHE_SECONDS = 5.0   # a qgroup query per instance is the dearest figure: list reuses it this long
DISK_WALK_SECONDS = 60.0   # where disk use is a walk of the root (no qgroups): this long (700 stopped
                           # busybox roots walked every 5 s took ~40% of a core and the GIL from the loop)


@dataclasses.dataclass(frozen=True)
class Stored:
    """The part of a view read from the state database (valid until the instance is written:
    StateDB.touched)."""

    rec: InstanceRecord
    fields: dict[str, Any]
    nics: list[tuple[NicRecord, str, bool]]   # row, host end, live (Plumbing.counter_sources)


class InstanceViews:
    """Builds views; holds the disk-use cache."""

    def __init__(self, config: DaemonConfig, storage: StorageDriver, network: NetworkManager, kinds: Kinds,
                 backups: BackupChains) -> None:
        self.config = config
        self.storage = storage
        self.network = network
        self.kinds = kinds
        self.backups = backups
        self._disk_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._disk_lock = threading.Lock()   # live() runs in threads

    # ------------------------------------------------------------- the two parts

    def stored(self, rec: InstanceRecord) -> Stored:
        """The database's part (call it on the event loop's thread)."""
        fields = {
            "id": rec.id, "name": rec.name, "project": rec.project, "type": rec.type.value,
            "state": rec.state.value, "pid": rec.pid if rec.state in ALIVE else None,
            "template": rec.template, "hostname": rec.hostname, "privileged": rec.privileged,
            # VMs have no id range (QEMU isolates them), privileged containers the host's ids
            "idmap": None if rec.idmap_base is None else {"uid_base": rec.idmap_base, "gid_base": rec.idmap_base,
                                                          "count": self.config.idmap_size},
            "limits": limits_mod.shown(rec.limits), "created_at": rec.created_at, "usage": None,
            "last_exit": rec.last_exit or None,
            # the live part's keys, here to keep the order clients have always seen (merge)
            "nics": None, "disk": None, "console": False, "cgroups": None, "vm": None,
            "onboot": rec.onboot, "boot_order": rec.boot_order, "boot_delay": rec.boot_delay,
            "stop_timeout": rec.stop_timeout,   # None: the server's (GET /1.0 config)
        }
        fields.update(admin.view_fields(rec))
        fields.update(self.backups.view_fields(rec))
        return Stored(rec, fields, self.network.counter_sources(rec))

    def live(self, stored: Stored, cached: bool = False, disk: bool = True) -> dict[str, Any]:
        """The kernel's and the drivers' part: file reads only, safe in a thread (disk=False:
        without the disk use, the one figure that may walk a tree)."""
        rec = stored.rec
        return {
            "usage": self.usage(rec),
            "nics": [nic_counters(nic, host, link_stats(host) if on else None) for nic, host, on in stored.nics],
            "disk": self.disk(rec, cached) if disk else None,
            "cgroups": self.cgroup_dirs(rec),
            **self.kinds.of(rec).view_fields(rec),   # console, vm (its guest agent's cached view), …
        }

    @staticmethod
    def merge(stored: Stored, live: dict[str, Any]) -> dict[str, Any]:
        """The view (dict.update keeps the stored part's key order)."""
        shown = dict(stored.fields)
        shown.update(live)
        return shown

    # ------------------------------------------------------------- views

    def view(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any]:
        """The whole view, on the caller's thread (set/rename answers, metrics)."""
        stored = self.stored(rec)
        return self.merge(stored, self.live(stored, cached))

    async def status(self, rec: InstanceRecord) -> dict[str, Any]:
        """The whole view for GET /1.0/instances/NAME, read at the time of the request. On the
        loop: one instance's cgroup and NIC files cost ~0.3 ms, less than the hand-off to a
        thread, which measured p99 12.7 ms against 3.1 ms (bench/api_scale.py, 1,000 instances,
        1 client). The disk use too where it is a few sysfs files (btrfs qgroups); where it is a
        walk of the root (no quota: a Debian root is tens of thousands of files) or a `btrfs`
        run, the one the list keeps (up to disk_ttl() old; the list's refresh keeps it), else
        one read in a thread: a walk on the loop would hold every other request."""
        stored = self.stored(rec)
        if self.storage.usage_is_cheap():
            return self.merge(stored, self.live(stored))
        live = self.live(stored, disk=False)
        with self._disk_lock:
            hit = self._disk_cache.get(rec.name)
        if hit is not None and time.monotonic() - hit[0] < self.disk_ttl():
            live["disk"] = hit[1]
        else:
            live["disk"] = await asyncio.to_thread(self.disk, rec)
        return self.merge(stored, live)

    def brief(self, rec: InstanceRecord) -> dict[str, Any]:
        """What a state change answers with: cheap, no counters read (start is a hot path)."""
        return {"id": rec.id, "name": rec.name, "type": rec.type.value, "state": rec.state.value,
                "pid": rec.pid if rec.state in ALIVE else None, "template": rec.template}

    # ------------------------------------------------------------- figures

    def cgroup_dirs(self, rec: InstanceRecord) -> dict[str, str] | None:
        """Where a running instance's cgroup is, per hierarchy (for monitoring; a container's
        cgroup2 directory may carry the name of the standby it started in)."""
        kind = self.kinds.of(rec)
        if not kind.is_running(rec):
            return None
        return kind.group(rec).dirs()

    def disk_ttl(self) -> float:
        """How long the list reuses a disk use: a few seconds where it is a few sysfs files, a
        minute where it walks the root."""
        return DISK_CACHE_SECONDS if self.storage.usage_is_cheap() else DISK_WALK_SECONDS

    def disk(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any] | None:
        """Disk use of the root (btrfs: from its qgroup); list asks for it cached (disk_ttl)."""
        now = time.monotonic()
        with self._disk_lock:
            hit = self._disk_cache.get(rec.name)
        if cached and hit and now - hit[0] < self.disk_ttl():
            return hit[1]
        try:
            value = {"used": self.storage.usage(rec.name), "limit": self.storage.quota(rec.name)}
        except (CtdError, OSError):  # OSError: its root is going (a destroy in progress)
            value = None
        with self._disk_lock:
            self._disk_cache[rec.name] = (now, value)
        return value

    def forget(self, name: str) -> None:
        """name is gone (renamed, destroyed): its cached disk use goes with it."""
        with self._disk_lock:
            self._disk_cache.pop(name, None)

    def usage(self, rec: InstanceRecord) -> dict[str, Any] | None:
        kind = self.kinds.of(rec)
        if not kind.is_running(rec):
            return None
        try:
            return dataclasses.asdict(kind.group(rec).usage())
        except (OSError, ValueError):
            return None
