"""Settings of an existing instance: `ctctl set` (limits, addresses, rate, guest settings),
all or nothing, and the OpenVZ beancounters of a running container.

check_set validates the request alone; Settings.apply checks it against the instance before
anything changes, then applies each step (live where the instance runs), recording its undo in
a Rollback: a failure half-way takes back what was applied and the error says so. The caller
(the manager) holds the instance's lock.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
from typing import Any

from ctd import guest, validate
from ctd import limits as limits_mod
from ctd.errors import Conflict, InvalidRequest, NotSupported
from ctd.instance import admin
from ctd.instance.backups import BACKUP_FIELDS, check_settings
from ctd.instance.bootorder import BOOT_FIELDS, check_boot
from ctd.instance.container import features, hostmounts
from ctd.instance.container.spec import DEFAULT_NUMPTY
from ctd.instance.context import InstanceContext, removed_limits
from ctd.instance.kinds import Kinds
from ctd.instance.requests import KEEP_RATE, SetRequest
from ctd.instance.rollback import Rollback
from ctd.instance.shapes import BeancounterRow
from ctd.instance.vm.disks import parse_disk_size
from ctd.network import ipam
from ctd.network.tc import parse_rate
from ctd.state import InstanceRecord, InstanceType, PowerState

SET_FIELDS = {"limits", "ipadd", "ipdel", "rate", "nameservers", "userpasswd", "ssh_keys", "timezone",
              "hostname", "features", "mounts", "unmount", "disk"} | admin.ADMIN_FIELDS | BOOT_FIELDS | BACKUP_FIELDS


def open_files(pids: set[int]) -> int:
    """Open file descriptors of these processes (OpenVZ's numfile 'held')."""
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def ptys_held(pids: set[int]) -> int:
    """ptys these processes hold (OpenVZ's numpty 'held'): distinct pty masters among their
    open files, by the tty-index the kernel shows for each (no walk into the tenant's /dev)."""
    held: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").endswith("ptmx"):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    held.update(line.split()[1] for line in info if line.startswith("tty-index:"))
            except (OSError, IndexError):
                pass
    return len(held)


def network_step(req: SetRequest) -> str:
    """How a set's address/rate step is named in its error."""
    parts = [f"--ipadd {a}" for a in req.ipadd] + [f"--ipdel {a}" for a in req.ipdel]
    if req.rate != KEEP_RATE:
        parts.append(f"--rate {req.rate or 'unlimited'}")
    return " ".join(parts)


def check_set(ctx: InstanceContext, body: Any) -> SetRequest:
    """The set request on its own (4xx errors); what needs the instance is checked in apply()."""
    body = validate.body_fields(body, SET_FIELDS)
    hostname = validate.hostname(body["hostname"]) if body.get("hostname") is not None else None
    changes = limits_mod.normalise(body.get("limits") or {}, len(ctx.host_cpus))
    ipadd = [str(ipam.parse_address(a)) for a in validate.string_list(body, "ipadd")]
    ipdel = [str(ipam.parse_address(a)) for a in validate.string_list(body, "ipdel")]
    rate: int | None | str = KEEP_RATE
    if body.get("rate") is not None:
        rate = None if str(body["rate"]).lower() in ("unlimited", "none", "0") else parse_rate(body["rate"])
    nameservers = [str(ipam.parse_address(a)) for a in validate.string_list(body, "nameservers")]
    userpasswd = guest.check_userpasswd(body["userpasswd"]) if body.get("userpasswd") is not None else None
    ssh_keys = [guest.check_ssh_key(k) for k in validate.string_list(body, "ssh_keys")]
    timezone = guest.check_timezone(body["timezone"]) if body.get("timezone") is not None else None
    flags = admin.check_change(body)
    boot = check_boot(body)
    backups = check_settings(body)
    wanted = features.check(body["features"]) if body.get("features") is not None else None
    if wanted:
        features.host_lacks(wanted)
    mounts = body["mounts"] if body.get("mounts") is not None else None
    if mounts is not None and not isinstance(mounts, list):
        raise InvalidRequest("mounts must be a list of \"SOURCE:TARGET[:ro][,idmap]\"")
    unmount = validate.string_list(body, "unmount") or None
    disk = parse_disk_size(body["disk"]) if body.get("disk") is not None else None
    if disk is None and not (changes or ipadd or ipdel or rate != KEEP_RATE or nameservers or userpasswd
                             or ssh_keys or timezone or hostname or not flags.empty or boot.given or backups.given
                             or wanted is not None or mounts or unmount):
        raise InvalidRequest("nothing to change: give a limit, address, rate, nameserver, password, key, "
                             "timezone, hostname, features, mounts, disk, disabled, protected, description, tags, "
                             "onboot, boot order, boot delay, backup schedule or backup keep")
    ctx.check_io_device(changes)
    return SetRequest(limits=changes, ipadd=ipadd, ipdel=ipdel, rate=rate, nameservers=nameservers,
                      userpasswd=userpasswd, ssh_keys=ssh_keys, timezone=timezone, hostname=hostname, admin=flags,
                      boot=boot, backup=backups, features=wanted, mounts=mounts, unmount=unmount, disk=disk)


class Settings:
    """ctctl set and beancounters."""

    def __init__(self, ctx: InstanceContext, kinds: Kinds) -> None:
        self.ctx = ctx
        self.kinds = kinds
        self._numfile_peak: dict[str, int] = {}
        self._numpty_peak: dict[str, int] = {}
        self._disk_peak: dict[str, int] = {}

    async def apply(self, rec: InstanceRecord, req: SetRequest) -> list[str]:
        """Limits, addresses, rate, guest settings — all or nothing. Every option is checked
        against the instance before anything changes; then each is applied (live where it
        runs), and a failure half-way takes back what was applied and says so in the error
        (a password hashed into the guest is the one step that cannot be taken back: it goes
        last). A running VM's cpus/ram follow after everything is stored, as far as QEMU can.
        Returns the notes for the answer."""
        await self._check_for(rec, req)
        new_mounts = self._check_mounts(rec, req) if (req.mounts or req.unmount) else None
        before = copy.deepcopy(rec)
        done = Rollback(rec.name)
        notes: list[str] = []
        step = "set"
        try:
            if "diskspace" in req.limits:
                step = "diskspace"
                await self._quota_step(rec, req.limits["diskspace"], done)
            if req.changes_network:
                step = network_step(req)
                await self._network_step(rec, req, done)
            if req.limits:
                step = "limits"
                await self._limits_step(rec, before, req.limits, done)
            step = "guest settings"
            await self._guest_step(rec, before, req, done, notes)
            req.boot.apply(rec)
            if req.features is not None and list(req.features) != rec.features:
                rec.features = list(req.features)
                if rec.state is not PowerState.STOPPED:
                    notes.append(f"features {', '.join(rec.features) or 'none'} apply at the next start "
                                 f"(ctctl restart {rec.name})")
            if new_mounts is not None:
                rec.mounts = [m.to_stored() for m in new_mounts]
                if rec.state is not PowerState.STOPPED:
                    notes.append(f"mounts apply at the next start (ctctl restart {rec.name})")
            if req.disk is not None:   # last: its undo is only safe right after it
                step = "disk"
                await self.kinds.vm.grow_disk(rec, req.disk, done, notes)
            step = "saving the settings"
            self.ctx.db.update_instance(rec)
        except BaseException as exc:
            raise await done.fail(exc, step) from None
        if req.limits:
            notes += await self.kinds.of(rec).after_set(rec, req.limits)
        return notes

    def _check_mounts(self, rec: InstanceRecord, req: SetRequest) -> list[hostmounts.HostMount]:
        """The instance's host mounts after the set: the kept ones (less unmount), then the added."""
        current = hostmounts.from_stored(rec.mounts)
        gone = set(req.unmount or [])
        unknown = sorted(gone - {m.target for m in current})
        if unknown:
            raise InvalidRequest(f"{rec.name} has no mount at {', '.join(unknown)}; "
                                 f"its mounts: {', '.join(m.text for m in current) or 'none'}")
        kept = [m for m in current if m.target not in gone]
        return hostmounts.check(req.mounts or [], self.ctx.config.state_dir, rec.privileged, keep=kept)

    async def _check_for(self, rec: InstanceRecord, req: SetRequest) -> None:
        """What check_set could not know without the instance: refused before any change."""
        ctx, kind, limits = self.ctx, self.kinds.of(rec), req.limits
        kind.check_limits(limits)
        if (req.features or req.mounts or req.unmount) and rec.type is not InstanceType.CONTAINER:
            raise InvalidRequest(f"features and mounts are container options; {rec.name} is a VM with its own "
                                 "kernel, devices and disks")
        if req.disk is not None and rec.type is not InstanceType.VM:
            raise InvalidRequest(f"disk is a VM option; {rec.name} is a container: its space is the diskspace "
                                 "limit (--diskspace)")
        if limits.get("diskspace", limits_mod.UNLIMITED) != limits_mod.UNLIMITED:
            if ctx.storage.name != "btrfs":
                raise NotSupported(f"the {ctx.storage.name} storage driver cannot limit disk space; disk quotas "
                                   "need the btrfs driver")
            used = await asyncio.to_thread(ctx.storage.usage, rec.name, True)
            if limits["diskspace"] < used:
                shown = limits_mod.human_size(used) if used % 1024 == 0 else used
                raise InvalidRequest(f"{rec.name} already uses {shown}"
                                     f" bytes on disk; the disk limit must be at least that")
        if req.changes_network:
            ctx.network.check_change(rec, req.ipadd, req.ipdel, req.rate, kind.is_running(rec))
        if req.userpasswd is not None:
            kind.check_password_user(rec, req.userpasswd[0])

    async def _quota_step(self, rec: InstanceRecord, limit: int, done: Rollback) -> None:
        storage = self.ctx.storage
        old = await asyncio.to_thread(storage.quota, rec.name)

        async def undo() -> None:
            await asyncio.to_thread(storage.set_quota, rec.name, old)

        done.done("diskspace", undo)
        await asyncio.to_thread(storage.set_quota, rec.name, None if limit == limits_mod.UNLIMITED else limit)

    async def _network_step(self, rec: InstanceRecord, req: SetRequest, done: Rollback) -> None:
        """--ipadd/--ipdel/--rate: the state, the host side (a running VM's tap too) and, in a
        running container, its interface; a VM's guest takes its addresses at next start."""
        network, kind = self.ctx.network, self.kinds.of(rec)
        before = self.ctx.db.nics_of(rec.id)
        live = kind.is_running(rec)

        async def undo() -> None:
            inside = await asyncio.to_thread(network.restore_nics, rec, before, live)
            await kind.configure_nics(rec, inside)

        done.done(network_step(req), undo)   # before the change: undoes a half-made one too
        inside = await asyncio.to_thread(network.change, rec, req.ipadd, req.ipdel,
                                         req.rate, live)
        await kind.configure_nics(rec, inside)

    async def _limits_step(self, rec: InstanceRecord, before: InstanceRecord, changes: dict[str, int],
                           done: Rollback) -> None:
        """New limits into rec, and into a running instance at once where its kind can (the
        kernel may refuse one: then none of them stays)."""
        new_limits = limits_mod.merge(dict(before.limits), changes)
        removed = removed_limits(changes)
        if "ram" in removed:
            new_limits.pop("swap", None)
        await self.kinds.of(rec).apply_limits(rec, before, new_limits, removed, done)
        rec.limits = new_limits

    async def _guest_step(self, rec: InstanceRecord, before: InstanceRecord, req: SetRequest,
                          done: Rollback, notes: list[str]) -> None:
        """Hostname, DNS, keys, timezone (and addresses) into the guest's files — a VM's seed —
        and the password last (its old hash is gone once the new one is written)."""
        guest_changed = bool(req.ipadd or req.ipdel or req.nameservers
                             or req.ssh_keys or req.timezone or req.hostname)
        userpasswd = req.userpasswd
        if not (guest_changed or userpasswd):
            return
        was = rec.options
        rec.options = dataclasses.replace(
            was, nameservers=tuple(req.nameservers) if req.nameservers else was.nameservers,
            ssh_keys=tuple(req.ssh_keys) if req.ssh_keys else was.ssh_keys, timezone=req.timezone or was.timezone)
        kind = self.kinds.of(rec)
        if req.hostname:
            rec.hostname = req.hostname
            if kind.is_running(rec):
                notes.append("hostname: applies at next start")
        await kind.write_guest(rec, before, userpasswd, notes, done)

    # ------------------------------------------------------------- beancounters

    def beancounters(self, rec: InstanceRecord, disk: dict[str, Any] | None) -> list[BeancounterRow]:
        """OpenVZ's /proc/user_beancounters rows for one running container (disk: its disk
        use, as the manager shows it)."""
        containers = self.kinds.container
        if not containers.is_running(rec):
            raise Conflict(f"{rec.name} is not running: its counters live in its cgroup")
        group = containers.group(rec)
        rows = [BeancounterRow(name=b.name, held=b.held, maxheld=b.maxheld, barrier=b.barrier, limit=b.limit,
                               failcnt=b.failcnt) for b in group.beancounters(self.ctx.resources(rec))]
        held = open_files(group.pids())
        limit = rec.limits.get("numfile")
        peak = self._numfile_peak[rec.name] = max(self._numfile_peak.get(rec.name, 0), held)
        rows.append(BeancounterRow(name="numfile", held=held, maxheld=peak, barrier=limit or limits_mod.UNLIMITED,
                                   limit=limit or limits_mod.UNLIMITED, failcnt=0))
        ptys = ptys_held(group.pids())
        numpty = rec.limits.get("numpty", DEFAULT_NUMPTY)
        peak = self._numpty_peak[rec.name] = max(self._numpty_peak.get(rec.name, 0), ptys)
        rows.append(BeancounterRow(name="numpty", held=ptys, maxheld=peak, barrier=numpty, limit=numpty, failcnt=0))
        if disk is not None:
            quota = disk["limit"] or limits_mod.UNLIMITED
            full = int(quota != limits_mod.UNLIMITED and disk["used"] >= quota - (1 << 20))
            peak = self._disk_peak[rec.name] = max(self._disk_peak.get(rec.name, 0), disk["used"])
            rows.append(BeancounterRow(name="diskspace", held=disk["used"], maxheld=peak, barrier=quota, limit=quota,
                                       failcnt=full))
        return rows
