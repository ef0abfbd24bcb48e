"""Provisioning: checking and carrying out create, clone and reinstall.

check_* validate a request completely before any work (4xx errors, name and id reserved);
create/clone then hand the kind-specific work to the instance's kind inside one undo block
(ctd/instance/reserve.py), which takes back what was made if it fails and releases the
reservation either way. The manager holds the locks and answers; this module does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from ctd import guest, validate
from ctd import limits as limits_mod
from ctd.errors import Conflict, InvalidRequest, NotFound
from ctd.instance import admin
from ctd.instance.backups import BACKUP_FIELDS, BackupChains, check_settings
from ctd.instance.bootorder import BOOT_FIELDS, check_boot
from ctd.instance.container import features, hostmounts
from ctd.instance.context import InstanceContext
from ctd.instance.kinds import Kinds
from ctd.instance.requests import CloneRequest, CreateRequest
from ctd.instance.reserve import NewInstance, new_instance
from ctd.network import ipam
from ctd.state import InstanceRecord, InstanceType, PowerState

CREATE_FIELDS = ({"name", "template", "id", "hostname", "privileged", "limits", "type", "nics", "nameservers",
                  "userpasswd", "ssh_keys", "timezone", "vm", "io_uring", "features", "mounts"}
                 | (admin.ADMIN_FIELDS - {"stop"}) | BOOT_FIELDS | BACKUP_FIELDS)


class Provisioner:
    """Create, clone and reinstall, for every kind."""

    def __init__(self, ctx: InstanceContext, kinds: Kinds) -> None:
        self.ctx = ctx
        self.kinds = kinds

    # ------------------------------------------------------------- create

    def check_create(self, body: Any, project: str = "default") -> CreateRequest:
        """Everything that can be checked before work starts; raises 4xx errors."""
        ctx = self.ctx
        body = validate.body_fields(body, CREATE_FIELDS, {"name"})
        name = validate.instance_name(body["name"])
        kind = self.kinds.named(body.get("type", "container"))
        vm = kind.check_body(body)
        template_name = body.get("template")
        template = None
        if template_name is not None:
            if not isinstance(template_name, str) or not template_name:
                raise InvalidRequest("template must be a template name, e.g. 'busybox'")
            template = ctx.templates.get(validate.instance_name(template_name, "template name"))
        hostname = validate.hostname(body.get("hostname") or name)
        privileged = validate.boolean(body, "privileged")
        io_uring = validate.boolean(body, "io_uring")
        if io_uring and not kind.takes_io_uring:
            raise InvalidRequest(f"io_uring is a container option; a {kind.type.value.upper()} has its own kernel")
        wanted = features.check(body["features"]) if body.get("features") is not None else ()
        if wanted and kind.type is not InstanceType.CONTAINER:
            raise InvalidRequest("features are container options; a VM has its own kernel and devices")
        features.host_lacks(wanted)
        mounts: list[hostmounts.HostMount] = []
        if body.get("mounts") is not None:
            if kind.type is not InstanceType.CONTAINER:
                raise InvalidRequest("mounts are container options; a VM has its own kernel and disks")
            mounts = hostmounts.check(body["mounts"], ctx.config.state_dir, privileged)
        limits = limits_mod.merge({}, limits_mod.normalise(body.get("limits") or {}, len(ctx.host_cpus)))
        if vm is not None:   # the profile's defaults, before admission counts them
            limits = {**vm.default_limits, **limits}
        ctx.check_io_device(limits)
        kind.check_limits(limits)
        nics = ctx.network.check_nics(body.get("nics"))
        nameservers = [str(ipam.parse_address(a)) for a in validate.string_list(body, "nameservers")]
        userpasswd = guest.check_userpasswd(body["userpasswd"]) if body.get("userpasswd") is not None else None
        ssh_keys = [guest.check_ssh_key(k) for k in validate.string_list(body, "ssh_keys")]
        timezone = guest.check_timezone(body["timezone"]) if body.get("timezone") is not None else None
        wanted_id = validate.instance_id(body["id"]) if body.get("id") is not None else None
        flags = admin.check_change(body)
        admin.check_for_new(flags)
        boot = check_boot(body)
        backups = check_settings(body)
        instance_id = ctx.reservations.reserve(name, wanted_id, "choose another name")
        return CreateRequest(name=name, id=instance_id, type=kind.type, template=template.name if template else "",
                             hostname=hostname, privileged=privileged, limits=limits, nics=nics,
                             nameservers=nameservers, userpasswd=userpasswd, ssh_keys=ssh_keys, timezone=timezone,
                             io_uring=io_uring, vm=vm, admin=flags, boot=boot,
                             backup=backups, features=wanted, mounts=tuple(m.to_stored() for m in mounts),
                             project=project)

    async def create(self, req: CreateRequest) -> InstanceRecord:
        kind = self.kinds.of_type(req.type)
        with self._new_instance(req) as new:
            rec = await kind.create(req, new)
            if not req.admin.empty or req.boot.given or req.features or req.mounts:
                admin.apply(rec, req.admin)
                req.boot.apply(rec)
                rec.features = list(req.features)
                rec.mounts = [dict(m) for m in req.mounts]
                self.ctx.db.update_instance(rec)
            BackupChains(self.ctx.config, self.ctx.db, self.ctx.storage).apply(rec, req.backup)
            return rec

    def _new_instance(self, req: CreateRequest) -> contextlib.AbstractContextManager[NewInstance]:
        ctx = self.ctx
        return new_instance(ctx.reservations, ctx.storage, ctx.db, ctx.network, req.name, req.id, req.project)

    # ------------------------------------------------------------- clone

    def check_clone(self, src: InstanceRecord, body: Any) -> CloneRequest:
        body = validate.body_fields(body, {"name", "snapshot"}, {"name"})
        snap = body.get("snapshot")
        if snap is not None:
            snap = validate.instance_name(snap, "snapshot name")
            if snap not in self.ctx.storage.list_snapshots(src.name):
                raise NotFound(f"{src.name} has no snapshot {snap!r}")
        elif src.state is not PowerState.STOPPED:
            raise Conflict(f"{src.name} is running: a copy of a live root is not consistent; stop it, "
                           "or snapshot it and clone the snapshot (--snapshot)")
        new = self.check_create(self.kinds.of(src).clone_body(src, body["name"]), src.project)
        return CloneRequest(new, src, snap)

    async def clone(self, req: CloneRequest, src_lock: asyncio.Lock) -> InstanceRecord:
        """A new instance from another's root (or snapshot): new id, id range, hostname, MAC, IP."""
        with self._new_instance(req.new) as new:
            rec = await self.kinds.of(req.source).clone(req, new, src_lock)
            # Like Proxmox: description and tags are copied; disabled and protected are not
            rec.description, rec.tags = req.source.description, dict(req.source.tags)
            rec.features = list(req.source.features)   # a copy of a VPS keeps its devices
            rec.mounts = [dict(m) for m in req.source.mounts]   # and its host directories (Proxmox's bind mp)
            self.ctx.db.update_instance(rec)
            return rec

    # ------------------------------------------------------------- reinstall

    def check_reinstall(self, rec: InstanceRecord, template: Any, restart: bool = False) -> None:
        admin.refuse_protected(rec, "reinstall")
        self.kinds.of(rec).check_reinstall(rec)
        self.ctx.templates.get(validate.instance_name(template, "template name"))
        if rec.state is not PowerState.STOPPED and not restart:
            raise Conflict(f"{rec.name} is running; stop it first or reinstall with --restart")

    async def reinstall(self, rec: InstanceRecord, template: str) -> list[str]:
        """A fresh root from the template for a stopped container (OpenVZ's reinstall): id,
        limits, NICs, keys and passwords stay. Returns notes (passwords that could not stay)."""
        ctx = self.ctx
        recipe = ctx.templates.recipe_of(template)
        passwords = await asyncio.to_thread(passwords_of, rec, ctx.storage.rootfs(rec.name))
        rootfs = await asyncio.to_thread(ctx.storage.reinstall_root, rec.name, template)
        rec.template, rec.init, rec.stop_signal = template, list(recipe.init), recipe.stop_signal
        rec.options = dataclasses.replace(rec.options, systemd=recipe.systemd, network_style=recipe.network_style)
        ctx.db.update_instance(rec)
        await asyncio.to_thread(ctx.setup_guest, rec, rootfs)
        return await asyncio.to_thread(put_passwords, rootfs, passwords, template)


def passwords_of(rec: InstanceRecord, rootfs: Path) -> dict[str, str]:
    """The hashes a reinstall keeps: root's, and the user's set with --userpasswd, as they
    are in the old root (the tenant may have changed them, or locked them: then none), else
    (no such user or no readable shadow there) the hash ctd kept when it set the password."""
    kept = rec.options.passwd
    users = ["root"] + ([kept.user] if kept is not None and kept.user != "root" else [])
    out = {}
    for user in users:
        current = guest.password_field(rootfs, user)
        if current is None and kept is not None and kept.user == user:
            current = kept.hash
        if guest.is_password_hash(current):
            out[user] = current
    return out


def put_passwords(rootfs: Path, passwords: dict[str, str], template: str) -> list[str]:
    notes = []
    for user, hashed in passwords.items():
        try:
            guest.set_password_hash(rootfs, user, hashed)
        except InvalidRequest:  # the new template has no such user (or no /etc/shadow)
            notes.append(f"the password of {user!r} was not kept: template {template} has no such user")
    return notes
