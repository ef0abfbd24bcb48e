"""REST handlers: validate, then do the work (long work as an operation)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from ctd import validate
from ctd.api.context import INSTANCE, ApiContext
from ctd.api.jsonbody import json_body
from ctd.cluster.create import place_create
from ctd.cluster.errors import IdTaken
from ctd.errors import Conflict, CtdError, InvalidRequest, Unavailable
from ctd.instance import admin, snapshots
from ctd.instance.answers import accepts_gzip
from ctd.instance.listing import Page, Scope, check_page
from ctd.operations import OP_PROJECT, Operation
from ctd.remote.policy import visible_info
from ctd.remote.scope import caller, is_admin, request_project, sees, visible_projects
from ctd.state import NetworkRecord
from ctd.template.mmdebstrap import BuildContext

if TYPE_CHECKING:
    from ctd.instance.requests import CloneRequest, CreateRequest, RestoreRequest
T = TypeVar("T")

routes = web.RouteTableDef()
CTX = web.AppKey("ctx", ApiContext)
MAX_WAIT = 3600.0


def ctx(request: web.Request) -> ApiContext:
    return request.app[CTX]


async def accepted(request: web.Request, op: Operation) -> web.Response:
    """202 with the operation; with ?wait=true, 200 once it is done (one round trip less)."""
    if flag(request, "wait"):
        await op.done.wait()
        return web.json_response({"operation": op.to_json()})
    return web.json_response({"operation": op.to_json()}, status=202,
                             headers={"Location": f"/1.0/operations/{op.id}"})


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("1", "0", "true", "false", "yes", "no"):
        raise InvalidRequest(f"query parameter {name} must be true or false")
    return value in ("1", "true", "yes")


# ------------------------------------------------------------------ server

@routes.get("/1.0")
async def server_info(request: web.Request) -> web.Response:
    return web.json_response(visible_info(caller(request), ctx(request).info))


@routes.get("/1.0/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    from ctd.api.schema import build_schema
    return web.json_response(build_schema())


# ------------------------------------------------------------------ instances

@routes.get("/1.0/instances")
async def list_instances(request: web.Request) -> web.Response:
    """?state=running and ?tag=KEY=VALUE (or ?tag=KEY), repeatable: every condition must hold;
    ?project=NAME: that project's only. Another project's instances are dropped unseen.
    ?limit=N&offset=M: one page ("total" counts the matches, "next" is the next page's offset).
    Served from the kept views and answers (ctd/instance/listing.py), gzip-compressed for a
    client that sends Accept-Encoding: gzip."""
    c = ctx(request)
    only = admin.check_filter(request.query.getall("state", []), request.query.getall("tag", []))
    page = check_page(request.query.get("limit"), request.query.get("offset"))
    scope = Scope(visible_projects(caller(request))).narrowed(request.query.get("project"))
    if c.cluster is None or not c.cluster.member:
        reply = await c.instances.listing.page(only, scope, page, accepts_gzip(request.headers.get("Accept-Encoding")))
        headers = {"Vary": "Accept-Encoding"}
        if reply.encoding is not None:
            headers["Content-Encoding"] = reply.encoding
        return web.Response(body=reply.body, content_type="application/json", headers=headers)
    # every node's, each row with its NODE; with etcd out of reach, this node's own and why
    own = json.loads((await c.instances.listing.page(only, scope, Page(None, 0))).body)["instances"]
    listed = [{**i, "node": c.cluster.name, "node_online": True} for i in own]
    answer: dict[str, Any] = {}
    try:
        remote = await c.cluster.remote_instances()
    except Unavailable as exc:
        remote, answer["cluster_error"] = [], exc.message
    listed += sorted((i for i in remote if scope.shows(str(i.get("project")))
                      and (only is None or only.matches_view(i))), key=lambda i: str(i.get("name")))
    end = len(listed) if page.limit is None else page.offset + page.limit
    return web.json_response({"instances": listed[page.offset:end], "total": len(listed),
                              "next": end if end < len(listed) else None, **answer})


def _drop(c: ApiContext, key: str, name: str, instance_id: int) -> None:
    """What admit_* and check_* held for a new instance the cluster refused."""
    c.projects.release(key)
    c.instances.release(name, instance_id)


async def check_and_claim(c: ApiContext, check: Callable[[], tuple[T, str]], ident: Callable[[T], tuple[str, int]],
                          auto_id: bool) -> tuple[T, str]:
    """check() (check_* and admit_*: the local reservation and the project's hold), then, in a
    cluster, the name and id claimed cluster-wide (409 naming the node that has them); what
    check() held goes if the claim fails. An id this node chose itself and another node took a
    moment ago is chosen again (the foreign ids are fresh after a refusal)."""
    for attempt in range(3):
        checked, key = check()
        if c.cluster is None:
            return checked, key
        name, instance_id = ident(checked)
        try:
            await c.cluster.claim(name, instance_id)
            return checked, key
        except IdTaken:
            _drop(c, key, name, instance_id)
            if not auto_id or attempt == 2:
                raise
        except BaseException:
            _drop(c, key, name, instance_id)
            raise
    raise AssertionError("unreachable")


def guard_name(c: ApiContext, name: str, instance_id: int, work: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
    """The work of a new instance: in a cluster, its claimed name and id go back if it fails."""
    return work if c.cluster is None else c.cluster.guard_new(name, instance_id, work)


@routes.post("/1.0/instances")
async def create_instance(request: web.Request) -> web.Response:
    """In the caller's project (an admin may name one: "project"), within its limits."""
    c = ctx(request)
    body = await json_body(request)
    project = c.projects.target(body, request_project(request))
    c.projects.check_body_name(body, project)   # before any lookup of the name: no oracle
    elsewhere, body = await place_create(request, c.cluster, body)   # in a cluster: --node auto|NAME
    if elsewhere is not None:
        return elsewhere

    def check() -> tuple[CreateRequest, str]:
        checked = c.instances.check_create(body, project)
        return checked, c.projects.admit_create(checked)

    checked, key = await check_and_claim(c, check, lambda r: (r.name, r.id),
                                         not (isinstance(body, dict) and body.get("id") is not None))
    if c.cluster is not None:   # its NICs' MACs and addresses, cluster-wide
        try:
            await c.cluster.claim_nics(checked.name, checked.id, checked.nics)
        except BaseException:
            _drop(c, key, checked.name, checked.id)
            await c.cluster.abandon(checked.name, checked.id)
            raise
    OP_PROJECT.set(project)
    return await accepted(request, c.operations.start("create", checked.name, guard_name(
        c, checked.name, checked.id, c.projects.guard(key, c.instances.create(checked)))))


@routes.get("/1.0/instances/{ref}")
async def get_instance(request: web.Request) -> web.Response:
    """Its row as the scoping read it a moment ago (nothing awaited since), figures read now."""
    c = ctx(request)
    rec = request.get(INSTANCE) or c.instances.get(request.match_info["ref"])
    return web.json_response({"instance": await c.instances.views.status(rec)})


@routes.delete("/1.0/instances/{ref}")
async def delete_instance(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    force = flag(request, "force")
    c.instances.check_destroy(rec, force)
    work = c.instances.destroy(rec, force)
    return await accepted(request, c.operations.start("destroy", rec.name, work if c.cluster is None
                                                      else c.cluster.guard_destroy(rec.name, rec.id, work)))


@routes.patch("/1.0/instances/{ref}")
async def set_instance(request: web.Request) -> web.Response:
    """Change limits; a running container gets them at once, without a restart."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    checked = c.instances.check_set(await json_body(request))
    key = c.projects.admit_set(rec, checked)
    if key is None:
        return web.json_response({"instance": await c.instances.set_config(rec, checked)})
    return web.json_response({"instance": await c.projects.guard(key, c.instances.set_config(rec, checked))})


@routes.post("/1.0/instances/{ref}/rename")
async def rename_instance(request: web.Request) -> web.Response:
    """{"name": NEW}: a stopped instance takes a new name."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = await json_body(request)
    c.projects.check_body_name(body, rec.project)
    if c.cluster is None or not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return web.json_response({"instance": await c.instances.rename(rec, body)})
    new = validate.instance_name(body["name"], "new name")
    old = rec.name
    if new == old or c.instances.reservations.name_taken(new):   # this node's own answer (nothing to undo)
        return web.json_response({"instance": await c.instances.rename(rec, body)})
    await c.cluster.claim(new)
    result = await c.cluster.guard_new(new, None, c.instances.rename(rec, body))
    try:
        await c.cluster.release(old)
    except CtdError:   # renamed all the same; the node's next tick drops the old name
        pass
    return web.json_response({"instance": result})


@routes.get("/1.0/instances/{ref}/beancounters")
async def instance_beancounters(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    rows = await asyncio.to_thread(c.instances.beancounters, rec)
    return web.json_response({"id": rec.id, "name": rec.name, "beancounters": rows})


@routes.get("/1.0/beancounters")
async def all_beancounters(request: web.Request) -> web.Response:
    """Every running container's counters; ?failing=true keeps the rows that hit a limit."""
    c = ctx(request)
    failing = flag(request, "failing")
    out = []
    for rec in c.db.list_instances():
        if rec.name not in c.instances.containers.running:
            continue
        try:
            rows = await asyncio.to_thread(c.instances.beancounters, rec)
        except CtdError:
            continue  # stopped meanwhile
        if failing:
            rows = [r for r in rows if r["failcnt"]]
        if rows:
            out.append({"id": rec.id, "name": rec.name, "beancounters": rows})
    return web.json_response({"instances": out})


@routes.put("/1.0/instances/{ref}/state")
async def change_state(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = validate.body_fields(await json_body(request), {"action", "timeout", "force", "paused"}, {"action"})
    action = body["action"]
    # none given: the instance's own stop timeout, else the server's
    timeout = validate.number(body, "timeout", 0, 0, 3600) if body.get("timeout") is not None else None
    force = validate.boolean(body, "force")
    paused = validate.boolean(body, "paused")
    if paused and (action != "start" or rec.type.value != "vm"):
        raise InvalidRequest("paused is for starting a VM")
    if action == "start":
        c.instances.check_start(rec)
        work = c.instances.start(rec, paused)
    elif action == "suspend":
        c.instances.check_suspend(rec)
        work = c.instances.suspend(rec)
    elif action == "resume":
        c.instances.check_resume(rec)
        work = c.instances.resume(rec)
    elif action == "stop":
        work = c.instances.stop(rec, timeout, force)
    elif action == "restart":
        work = c.instances.restart(rec, timeout, force)
    else:
        raise InvalidRequest(f"unknown action {action!r}; use start, stop, restart, suspend or resume")
    return await accepted(request, c.operations.start(action, rec.name, work))


@routes.post("/1.0/shutdown")
async def shutdown_all(request: web.Request) -> web.Response:
    """Every running instance stopped in reverse boot order (host shutdown; ctctl shutdown-all)."""
    c = ctx(request)
    body = validate.body_fields(await json_body(request) if request.can_read_body else {}, {"timeout"})
    if c.autostart is None:
        raise Conflict("this server runs without autostart; stop the instances one by one")
    timeout = c.autostart.check_timeout(body)
    return await accepted(request, c.operations.start("shutdown-all", "host", c.autostart.shutdown_all(timeout)))


# ------------------------------------------------------------------ templates

@routes.get("/1.0/templates")
async def list_templates(request: web.Request) -> web.Response:
    c = ctx(request)
    built = {t.name: t for t in c.db.list_templates()}
    out = []
    for name, recipe in sorted(c.templates.recipes().items()):
        rec = built.pop(name, None)
        out.append({"name": name, "description": recipe.description, "distro": recipe.distro,
                    "release": recipe.release, "built": rec is not None,
                    "arch": rec.arch if rec else None, "size": rec.size if rec else None,
                    "built_at": rec.built_at if rec else None})
    for name, rec in sorted(built.items()):  # built from a recipe that is gone now
        out.append({"name": name, "description": "", "distro": rec.distro, "release": rec.release,
                    "built": True, "arch": rec.arch, "size": rec.size, "built_at": rec.built_at})
    return web.json_response({"templates": out})


@routes.post("/1.0/templates")
async def build_template(request: web.Request) -> web.Response:
    """Build from the recipe NAME, or {"name", "from": INSTANCE} to turn an instance into one."""
    c = ctx(request)
    body = validate.body_fields(await json_body(request), {"name", "from", "mirror", "import"})
    if body.get("import") is not None:
        checked = c.transfers.check_import(body)
        op = c.operations.new("template-import", checked.name)

        async def imported() -> dict[str, Any]:
            c.templates.building.add(checked.name)
            try:
                rec, dropped = await asyncio.to_thread(c.transfers.import_template, checked, op)
            finally:
                c.templates.building.discard(checked.name)
            c.db.add_template(rec)
            return {"name": rec.name, "size": rec.size, "built_at": rec.built_at, "dropped_devices": dropped}

        return await accepted(request, c.operations.start("template-import", checked.name, imported(), op))
    if "name" not in body:
        raise InvalidRequest("missing field(s): name")
    name = validate.instance_name(body["name"], "template name")
    if body.get("from") is not None:
        src = c.instances.get(validate.instance_ref(str(body["from"])))
        if src.name in c.instances.containers.running:
            raise Conflict(f"{src.name} is running; stop it first so the template is consistent")
        if c.db.get_template(name) is not None or name in c.templates.recipes():
            raise Conflict(f"a template named {name!r} exists already; choose another name")
        base = c.db.get_template(src.template)

        async def from_instance() -> dict[str, Any]:
            async with c.instances.lock(src):
                rec = await asyncio.to_thread(c.templates.from_instance_blocking, name,
                                              c.instances.storage.rootfs(src.name), base)
            c.db.add_template(rec)
            return {"name": rec.name, "size": rec.size, "built_at": rec.built_at}

        return await accepted(request, c.operations.start("template-create", name, from_instance()))
    c.templates.recipe(name)  # 404 for an unknown recipe, before any work
    mirror = body.get("mirror")
    if mirror is not None and (not isinstance(mirror, str) or not mirror.startswith(("http://", "https://", "file:/"))):
        raise InvalidRequest("mirror must be a URL like http://HOST/debian")
    if name in c.templates.building:
        raise Conflict(f"template {name} is being built already")
    op = c.operations.new("template-build", name)
    build = BuildContext(progress=lambda line: setattr(op, "progress", line), cancelled=op.cancelled, mirror=mirror)

    async def work() -> dict[str, Any]:
        c.templates.building.add(name)
        try:
            rec = await asyncio.to_thread(c.templates.build_blocking, name, build)
        finally:
            c.templates.building.discard(name)
        c.db.add_template(rec)
        return {"name": rec.name, "size": rec.size, "built_at": rec.built_at}

    return await accepted(request, c.operations.start("template-build", name, work(), op))


@routes.delete("/1.0/templates/{name}")
async def delete_template(request: web.Request) -> web.Response:
    c = ctx(request)
    name = validate.instance_name(request.match_info["name"], "template name")
    c.templates.delete(name)
    return web.json_response({"deleted": name})


# ------------------------------------------------------------------ operations

def operation(request: web.Request) -> Operation:
    """The operation of the path, if the caller's project may see it; else the 404 of an unknown id."""
    return ctx(request).operations.get(request.match_info["id"], lambda o: sees(request, o.project))


@routes.get("/1.0/operations")
async def list_operations(request: web.Request) -> web.Response:
    return web.json_response({"operations": [o.to_json() for o in ctx(request).operations.list()
                                             if sees(request, o.project)]})


@routes.get("/1.0/operations/{id}")
async def get_operation(request: web.Request) -> web.Response:
    return web.json_response({"operation": operation(request).to_json()})


@routes.delete("/1.0/operations/{id}")
async def cancel_operation(request: web.Request) -> web.Response:
    """Ask a running operation to stop (template builds stop; others finish their step)."""
    op = operation(request)
    op.cancelled.set()
    return web.json_response({"operation": op.to_json()})


@routes.get("/1.0/operations/{id}/wait")
async def wait_operation(request: web.Request) -> web.Response:
    raw = request.query.get("timeout", str(MAX_WAIT))
    try:
        timeout = float(raw)
    except ValueError:
        raise InvalidRequest(f"timeout must be a number of seconds, got {raw!r}") from None
    if not 0 <= timeout <= MAX_WAIT:
        raise InvalidRequest(f"timeout must be from 0 to {MAX_WAIT:g} seconds")
    op = await ctx(request).operations.wait(operation(request).id, timeout)
    return web.json_response({"operation": op.to_json()})


# ------------------------------------------------------------------ host check

@routes.get("/1.0/check")
async def host_check(request: web.Request) -> web.Response:
    import hostcheck
    from hostcheck import CheckResult, Status

    c = ctx(request)
    results = await asyncio.to_thread(hostcheck.run_checks, None, c.config.storage_dir)
    # QEMU may have been installed since ctd started: ask again, so the tool's line and the
    # driver's agree (and GET /1.0, which holds the same dict, says so too)
    c.info.setdefault("drivers", {})["vm"] = await asyncio.to_thread(c.instances.probe_vms)
    for driver, state in c.info.get("drivers", {}).items():
        results.append(CheckResult(
            name=f"driver:{driver}", status=Status.OK if state.get("usable") else Status.WARN,
            detail="usable" if state.get("usable") else f"not usable: {state.get('reason', '')}",
            fix="" if state.get("usable") else state.get("fix", "see the ctd log"),
            required=driver == "container", category="ctd"))
    return web.json_response(hostcheck.to_dict(results))


# ------------------------------------------------------------------ networks

def network_view(request: web.Request, net: NetworkRecord) -> dict[str, Any]:
    """A network as the caller may see it: `used_by` names only its own project's instances."""
    c = ctx(request)
    view = c.network.view(net)
    if not is_admin(request):
        mine = {r.name for r in c.db.list_instances() if sees(request, r.project)}
        view["used_by"] = [n for n in view["used_by"] if n in mine]
    return view


@routes.get("/1.0/networks")
async def list_networks(request: web.Request) -> web.Response:
    c = ctx(request)
    return web.json_response({"networks": [network_view(request, n) for n in c.db.list_networks()]})


@routes.post("/1.0/networks")
async def create_network(request: web.Request) -> web.Response:
    c = ctx(request)
    checked = await asyncio.to_thread(c.network.check_create_network, await json_body(request))
    return web.json_response({"network": await asyncio.to_thread(c.network.create_network, checked)}, status=201)


@routes.get("/1.0/networks/{name}")
async def get_network(request: web.Request) -> web.Response:
    c = ctx(request)
    return web.json_response({"network": network_view(request, c.network.network(request.match_info["name"]))})


@routes.delete("/1.0/networks/{name}")
async def delete_network(request: web.Request) -> web.Response:
    c = ctx(request)
    await asyncio.to_thread(c.network.delete_network, request.match_info["name"])
    return web.json_response({"deleted": request.match_info["name"]})


# ------------------------------------------------------------------ storage, snapshots, clones

@routes.get("/1.0/storage")
async def storage_info(request: web.Request) -> web.Response:
    c = ctx(request)
    return web.json_response({"storage": await asyncio.to_thread(c.instances.storage.pool_info)})


@routes.get("/1.0/instances/{ref}/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    return web.json_response({"snapshots": c.instances.snapshots.list(rec)})


@routes.post("/1.0/instances/{ref}/snapshots")
async def create_snapshot(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = validate.body_fields(await json_body(request), {"name"}, {"name"})
    snap = snapshots.check_name(body["name"])
    if snap in c.instances.snapshots.list(rec):
        raise Conflict(f"{rec.name} already has a snapshot {snap!r}; choose another name or delete it")
    key = c.projects.admit_snapshot(rec)
    return await accepted(request, c.operations.start("snapshot", rec.name,
                                                      c.projects.guard(key, c.instances.snapshots.take(rec, snap))))


@routes.delete("/1.0/instances/{ref}/snapshots/{snap}")
async def delete_snapshot(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    snap = snapshots.check_name(request.match_info["snap"])
    await c.instances.snapshots.delete(rec, snap)
    return web.json_response({"deleted": snap})


@routes.post("/1.0/instances/{ref}/rollback")
async def rollback(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = validate.body_fields(await json_body(request), {"snapshot", "restart"}, {"snapshot"})
    snap = snapshots.check_name(body["snapshot"])
    restart = validate.boolean(body, "restart")
    c.instances.snapshots.check_rollback(rec, snap, restart)
    work = c.instances.snapshots.rollback(rec, snap, restart)
    return await accepted(request, c.operations.start("rollback", rec.name, work))


@routes.post("/1.0/instances/{ref}/clone")
async def clone(request: web.Request) -> web.Response:
    c = ctx(request)
    src = c.instances.get(request.match_info["ref"])
    body = await json_body(request)
    c.projects.check_body_name(body, src.project)

    def check() -> tuple[CloneRequest, str]:
        checked = c.instances.check_clone(src, body)
        return checked, c.projects.admit_clone(checked)

    checked, key = await check_and_claim(c, check, lambda r: (r.name, r.new.id), True)
    return await accepted(request, c.operations.start("clone", checked.name, guard_name(
        c, checked.name, checked.new.id, c.projects.guard(key, c.instances.clone(checked)))))


@routes.post("/1.0/instances/{ref}/reinstall")
async def reinstall(request: web.Request) -> web.Response:
    """OpenVZ's reinstall: a fresh root from the template; id, limits, NICs, keys and passwords
    stay; restart: a running instance is stopped first and started again."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = validate.body_fields(await json_body(request), {"template", "restart"})
    template = body.get("template") or rec.template
    restart = validate.boolean(body, "restart")
    c.instances.check_reinstall(rec, template, restart)
    return await accepted(request, c.operations.start("reinstall", rec.name,
                                                      c.instances.reinstall(rec, template, restart)))


# ------------------------------------------------------------------ backups and template files

@routes.post("/1.0/instances/{ref}/backup")
async def backup_instance(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    checked = c.transfers.check_backup(rec, await json_body(request))
    key = c.projects.admit_backup(rec) if checked.chain else None   # a row in backup_dir: limits.backups
    op = c.operations.new("backup", rec.name)
    work = c.transfers.backup(rec, checked, op)
    return await accepted(request, c.operations.start("backup", rec.name,
                                                      work if key is None else c.projects.guard(key, work), op))


@routes.get("/1.0/instances/{ref}/backups")
async def list_backups(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    listed = c.instances.backups.list(rec)
    if not is_admin(request):   # the host's paths are the admin's: a file name is enough to tell them apart
        listed = [{**b, "file": Path(b["file"]).name} for b in listed]
    return web.json_response({"backups": listed})


@routes.post("/1.0/restore")
async def restore_instance(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await json_body(request)
    project = c.projects.target(body, request_project(request))
    checked = await asyncio.to_thread(c.transfers.check_restore, body, project)

    def check() -> tuple[RestoreRequest, str]:   # the backup was read once, above; only the claim repeats
        return checked, c.projects.admit_restore(checked)

    checked, key = await check_and_claim(c, check, lambda r: (r.name, r.id), False)
    OP_PROJECT.set(project)
    op = c.operations.new("restore", checked.name)
    return await accepted(request, c.operations.start("restore", checked.name, guard_name(
        c, checked.name, checked.id, c.projects.guard(key, c.transfers.restore(checked, op))), op))


@routes.post("/1.0/templates/{name}/export")
async def export_template(request: web.Request) -> web.Response:
    c = ctx(request)
    name = validate.instance_name(request.match_info["name"], "template name")
    checked = c.transfers.check_export(name, await json_body(request))
    op = c.operations.new("template-export", name)
    return await accepted(request, c.operations.start("template-export", name,
                                       asyncio.to_thread(c.transfers.export_template, checked, op), op))


@routes.get("/1.0/instances/{ref}/hardware")
async def vm_hardware(request: web.Request) -> web.Response:
    """What QEMU says a running VM has: status, TPM, block devices, PCI devices, chardevs."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    return web.json_response({"hardware": await c.instances.hardware(rec)})


@routes.post("/1.0/instances/{ref}/media")
async def vm_media_insert(request: web.Request) -> web.Response:
    """{"iso": PATH, "boot": bool}: the VM's removable CD-ROM takes the ISO (live if it runs)."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    return web.json_response({"instance": await c.vm_devices.media(rec, await json_body(request))})


@routes.delete("/1.0/instances/{ref}/media")
async def vm_media_eject(request: web.Request) -> web.Response:
    """The VM's removable CD-ROM emptied; it boots from its disk again."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    return web.json_response({"instance": await c.vm_devices.media(rec, None)})


@routes.post("/1.0/instances/{ref}/disks")
async def vm_disk_add(request: web.Request) -> web.Response:
    """{"size": "20G", "name": "data1"}: a data disk for the VM (live where it can be)."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    return web.json_response({"instance": await c.vm_devices.data_disk(rec, await json_body(request))}, status=201)


@routes.delete("/1.0/instances/{ref}/disks/{disk}")
async def vm_disk_remove(request: web.Request) -> web.Response:
    """The VM's data disk given back by the guest and deleted (its data is gone)."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    return web.json_response({"instance": await c.vm_devices.data_disk(rec, None, request.match_info["disk"])})
