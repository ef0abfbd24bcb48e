"""Projects at run time: their usage, admission of growth against their limits, instance names.

Contract:
- usage(P) is what P's instances use now: their rows, with what requests admitted but not yet
  finished counted in (holds), so two concurrent creates cannot both take the last place. A
  hold names the instance it replaces (a set, a create's new id), whose row is then not counted
  twice; it goes when the request's work ends (guard()).
- admit(...) raises Conflict (409) naming the limit, the usage and what to do, before anything
  is made; the caller wraps the work in guard(key, work).
- check_instance_name(name, P): instances of a project other than 'default' are named "P-...",
  and no 'default' instance takes a name with another project's prefix. Names stay unique
  host-wide (storage, cgroups and NICs are keyed by them), but two projects can never ask for
  the same name, so a clash is only ever with an instance the asker can see: a create or rename
  answers nothing about other projects (docs/remote.md, "Names").

How a tenant would abuse it, and what stops it: racing creates past a limit (holds); creating
instances without limits to escape the RAM/disk sum (missing_limit); lowering usage figures by
naming an instance of another project (every per-instance route is scoped before this runs);
probing other projects' names by create (the prefix rule).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from ctd import limits as limits_mod
from ctd import validate
from ctd.errors import Conflict, CtdError, InvalidRequest
from ctd.instance.manager import InstanceManager
from ctd.instance.requests import CloneRequest, CreateRequest, RestoreRequest, SetRequest
from ctd.network.manager import NicRequest
from ctd.project import model
from ctd.project.model import DEFAULT, Project, Usage
from ctd.project.store import ProjectStore
from ctd.state import InstanceRecord, InstanceType, StateDB

T = TypeVar("T")


@dataclass(frozen=True)
class Hold:
    project: str
    instance_id: int | None   # the instance whose row this replaces (None: adds to it)
    usage: Usage


def _vm_disk(rec: InstanceRecord) -> int | None:
    """A VM's disk size in bytes (what it counts against the project's disk limit); None for a container."""
    if rec.type is not InstanceType.VM or rec.options.vm is None:
        return None
    return rec.options.vm.all_disks_size  # the root disk and its data disks


class ProjectManager:
    def __init__(self, db: StateDB, instances: InstanceManager) -> None:
        self.db = db
        self.instances = instances
        self.store = ProjectStore(db)
        self._holds: dict[str, Hold] = {}

    # ------------------------------------------------------------- usage

    def instance_usage(self, rec: InstanceRecord, addresses: int | None = None) -> Usage:
        vm_disk = _vm_disk(rec)
        if addresses is None:
            addresses = sum(len(n.addresses) for n in self.db.nics_of(rec.id))
        try:
            snapshots = len(self.instances.snapshots.list(rec))
        except (CtdError, OSError):   # its storage is going (a destroy in progress): none
            snapshots = 0
        backups = len(self.instances.backups.store.backups_of(rec.id))
        return model.instance_usage(rec.limits, vm_disk=vm_disk, addresses=addresses, snapshots=snapshots,
                                    backups=backups)

    def usage(self, project: str) -> Usage:
        replaced = {h.instance_id for h in self._holds.values() if h.project == project and h.instance_id is not None}
        addresses = self.store.addresses_by_instance(project)
        total = Usage()
        for rec in self.db.list_instances():
            if rec.project == project and rec.id not in replaced:
                total = total + self.instance_usage(rec, addresses.get(rec.id, 0))
        for hold in self._holds.values():
            if hold.project == project:
                total = total + hold.usage
        return total

    # ------------------------------------------------------------- admission

    def admit_change(self, rec: InstanceRecord, after: Usage, limits: dict[str, int]) -> str:
        """Admit an instance's new usage `after` (a set of its limits or addresses); a hold key."""
        p = self.store.require(rec.project)
        missing = model.missing_limit(p, limits, rec.type is InstanceType.VM)
        if missing:
            raise Conflict(missing)
        before = self.usage(rec.project)
        held = [h.usage for h in self._holds.values() if h.instance_id == rec.id]
        current = held[-1] if held else self.instance_usage(rec)
        refused = model.refusal(p, before, before - current + after)
        if refused:
            raise Conflict(refused)
        key = uuid.uuid4().hex
        self._holds[key] = Hold(rec.project, rec.id, after)
        return key

    def admit_new(self, project: str, instance_id: int, after: Usage, limits: dict[str, int],
                  vm: bool = False) -> str:
        """A create, clone or restore: one more instance using `after`; a hold key."""
        p = self.store.require(project)
        missing = model.missing_limit(p, limits, vm)
        if missing:
            raise Conflict(missing)
        # (no limits, nothing to add up: a project's usage walks all its instances)
        before = self.usage(project) if p.limits else Usage()
        refused = model.refusal(p, before, before + after)
        if refused:
            raise Conflict(refused)
        key = uuid.uuid4().hex
        self._holds[key] = Hold(project, instance_id, after)
        return key

    def nic_addresses(self, nics: list[NicRequest]) -> int:
        """How many addresses these NICs will hold: those given, else one per subnet of the network."""
        count = 0
        for nic in nics:
            if nic.addresses:
                count += len(nic.addresses)
            elif nic.network is not None:
                net = self.db.get_network(nic.network)
                count += 0 if net is None else (net.subnet4 is not None) + (net.subnet6 is not None)
        return count

    def admit_snapshot(self, rec: InstanceRecord) -> str:
        return self._admit_one(rec, Usage(snapshots=1))

    def admit_backup(self, rec: InstanceRecord) -> str:
        """A backup into the node's backup_dir (a row ctd keeps, counted against limits.backups)."""
        return self._admit_one(rec, Usage(backups=1))

    def _admit_one(self, rec: InstanceRecord, more: Usage) -> str:
        p = self.store.require(rec.project)
        before = self.usage(rec.project) if p.limits else Usage()
        refused = model.refusal(p, before, before + more)
        if refused:
            raise Conflict(refused)
        key = uuid.uuid4().hex
        self._holds[key] = Hold(rec.project, None, more)
        return key

    # ------------------------------------------------------------- the requests that grow a project

    def target(self, body: Any, caller_project: str) -> str:
        """The project a create or restore lands in: the body's "project" (admins only: the role
        table refuses the field to others) or the caller's. Removes the field from the body."""
        if isinstance(body, dict) and "project" in body:
            name = body.pop("project")
            return self.store.require(name if name == DEFAULT else model.check_name(name)).name
        return caller_project

    def admit_create(self, req: CreateRequest) -> str:
        """Name rule and limits for a checked create or clone; its reservation goes if refused."""
        try:
            self.check_instance_name(req.name, req.project)
            vm_disk = req.vm.options.disk_size if req.vm is not None else None
            usage = model.instance_usage(req.limits, vm_disk=vm_disk, addresses=self.nic_addresses(req.nics))
            return self.admit_new(req.project, req.id, usage, req.limits, req.type is InstanceType.VM)
        except BaseException:
            self.instances.release(req.name, req.id)
            raise

    def admit_clone(self, req: CloneRequest) -> str:
        src = req.source
        try:
            self.check_instance_name(req.name, req.new.project)
            usage = self.instance_usage(src) - Usage(snapshots=len(self.instances.snapshots.list(src)))
            return self.admit_new(req.new.project, req.new.id, usage, src.limits, src.type is InstanceType.VM)
        except BaseException:
            self.instances.release(req.name, req.new.id)
            raise

    def admit_restore(self, req: RestoreRequest) -> str:
        try:
            self.check_instance_name(req.name, req.project)
            usage = model.instance_usage(req.plan.limits, addresses=self.nic_addresses(req.plan.nics))
            return self.admit_new(req.project, req.id, usage, req.plan.limits)
        except BaseException:
            self.instances.release(req.name, req.id)
            raise

    def admit_set(self, rec: InstanceRecord, req: SetRequest) -> str | None:
        """A set that changes limits or addresses; None when it changes neither."""
        if not req.limits and not req.ipadd and not req.ipdel:
            return None
        limits = limits_mod.merge(rec.limits, req.limits)
        current = self.instance_usage(rec)
        addresses = max(0, current.addresses + len(req.ipadd) - len(req.ipdel))
        vm_disk = _vm_disk(rec)
        after = model.instance_usage(limits, vm_disk=vm_disk, addresses=addresses, snapshots=current.snapshots)
        return self.admit_change(rec, after, limits)

    def release(self, key: str) -> None:
        self._holds.pop(key, None)

    async def guard(self, key: str, work: Awaitable[T]) -> T:
        """Run the admitted work; its hold goes when it ends, however it ends."""
        try:
            return await work
        finally:
            self.release(key)

    # ------------------------------------------------------------- names

    def check_body_name(self, body: Any, project: str) -> None:
        """The name rule on a request's "name" (create, clone, rename), before the name is looked
        up anywhere: a name of another project's prefix is refused the same whether it exists."""
        if isinstance(body, dict) and isinstance(body.get("name"), str):
            self.check_instance_name(body["name"], project)

    def check_instance_name(self, name: str, project: str) -> None:
        if project != DEFAULT:
            prefix = f"{project}-"
            if not name.startswith(prefix) or len(name) == len(prefix):
                raise InvalidRequest(f"instances of project {project} are named '{prefix}...' "
                                     f"(e.g. {prefix}web); {name!r} is not")
            return
        owner = name.split("-", 1)[0] if "-" in name else None
        if owner is not None and owner != DEFAULT and owner in self.store.names():
            raise InvalidRequest(f"names beginning with '{owner}-' belong to project {owner}; "
                                 "choose another name, or create it in that project")

    # ------------------------------------------------------------- projects

    def create(self, body: Any) -> Project:
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object: {\"name\": ..., \"limits\": {...}}")
        unknown = sorted(set(body) - {"name", "description", "limits", "allow_exec", "templates"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; known: name, description, limits, "
                                 "allow_exec, templates")
        name = model.check_name(body.get("name"))
        if self.store.get(name) is not None:
            raise Conflict(f"a project named {name!r} exists already")
        taken = [n for n in (r.name for r in self.db.list_instances()) if n.startswith(f"{name}-")]
        if taken:
            raise Conflict(f"instances named '{name}-...' exist already ({', '.join(taken[:5])}): the names "
                           f"of project {name} would clash with them; rename them or choose another name")
        project = self._changed(Project(name), body)
        return self.store.add(project)

    def update(self, name: str, body: Any) -> Project:
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object, e.g. {\"limits\": {\"instances\": 5}}")
        unknown = sorted(set(body) - {"description", "limits", "allow_exec", "templates"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; known: description, limits, "
                                 "allow_exec, templates")
        project = self._changed(self.store.require(name), body)
        self.store.update(project)
        return project

    def _changed(self, project: Project, body: dict[str, Any]) -> Project:
        changes: dict[str, Any] = {}
        if "description" in body:
            if not isinstance(body["description"], str) or len(body["description"]) > 255 \
                    or not body["description"].isprintable():
                raise InvalidRequest("description must be printable text of at most 255 characters")
            changes["description"] = body["description"]
        if "limits" in body:
            changes["limits"] = model.merged(project.limits, model.check_limits(body["limits"]))
        if "allow_exec" in body:
            if not isinstance(body["allow_exec"], bool):
                raise InvalidRequest("allow_exec must be true or false")
            changes["allow_exec"] = body["allow_exec"]
        if "templates" in body:
            changes["templates"] = self._templates(body["templates"])
        return project.with_changes(**changes)

    @staticmethod
    def _templates(value: Any) -> list[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or len(value) > 256:
            raise InvalidRequest("templates must be a list of template names (or null: the host's recipes)")
        return sorted({validate.instance_name(t, "template name") for t in value})

    def delete(self, name: str) -> None:
        project = self.store.require(name)
        used = self.store.instance_names(project.name)
        if used:
            shown = ", ".join(used[:10]) + (" ..." if len(used) > 10 else "")
            raise Conflict(f"project {name} still has {len(used)} instance(s): {shown}; delete or move them first "
                           "(to move one: ctctl backup, then ctctl restore --project OTHER --name OTHER-...)")
        self.store.delete(project.name)

    def view(self, project: Project) -> dict[str, Any]:
        usage = self.usage(project.name)
        return {"name": project.name, "description": project.description,
                "limits": {k: model.human(k, v) if k in model.SIZE_LIMITS else v for k, v in project.limits.items()},
                "usage": usage.as_dict(), "allow_exec": project.allow_exec, "templates": project.templates,
                "instances": self.store.instance_names(project.name), "created_at": project.created_at}

    # ------------------------------------------------------------- what tenants may do

    def exec_allowed(self, project: str) -> bool:
        p = self.store.get(project)
        return p is not None and p.allow_exec

    def template_allowed(self, project: str, template: str) -> bool:
        p = self.store.get(project)
        if p is None:
            return False
        if p.templates is not None:
            return template in p.templates
        return template in self.instances.ctx.templates.recipes()
