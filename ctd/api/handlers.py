"""REST handlers: validate, then do the work (long work as an operation)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ctd import validate
from ctd.api.context import ApiContext
from ctd.api.jsonbody import json_body
from ctd.errors import Conflict, CtdError, InvalidRequest
from ctd.operations import Operation
from ctd.template.mmdebstrap import BuildContext

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
    return web.json_response(ctx(request).info)


@routes.get("/1.0/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    from ctd.api.schema import build_schema
    return web.json_response(build_schema())


# ------------------------------------------------------------------ instances

@routes.get("/1.0/instances")
async def list_instances(request: web.Request) -> web.Response:
    """?state=running and ?tag=KEY=VALUE (or ?tag=KEY), repeatable: every condition must hold."""
    c = ctx(request)
    only = c.instances.check_list_filter(request.query.getall("state", []), request.query.getall("tag", []))
    return web.json_response({"instances": c.instances.list(only)})


@routes.post("/1.0/instances")
async def create_instance(request: web.Request) -> web.Response:
    c = ctx(request)
    checked = c.instances.check_create(await json_body(request))
    return await accepted(request, c.operations.start("create", checked.name, c.instances.create(checked)))


@routes.get("/1.0/instances/{ref}")
async def get_instance(request: web.Request) -> web.Response:
    c = ctx(request)
    return web.json_response({"instance": c.instances.view(c.instances.get(request.match_info["ref"]))})


@routes.delete("/1.0/instances/{ref}")
async def delete_instance(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    force = flag(request, "force")
    c.instances.check_destroy(rec, force)
    return await accepted(request, c.operations.start("destroy", rec.name, c.instances.destroy(rec, force)))


@routes.patch("/1.0/instances/{ref}")
async def set_instance(request: web.Request) -> web.Response:
    """Change limits; a running container gets them at once, without a restart."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    checked = c.instances.check_set(await json_body(request))
    return web.json_response({"instance": await c.instances.set_config(rec, checked)})


@routes.post("/1.0/instances/{ref}/rename")
async def rename_instance(request: web.Request) -> web.Response:
    """{"name": NEW}: a stopped instance takes a new name."""
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    return web.json_response({"instance": await c.instances.rename(rec, await json_body(request))})


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
    timeout = validate.number(body, "timeout", c.config.stop_timeout, 0, 3600)
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
    timeout = c.autostart.check_timeout(body, c.config.stop_timeout)
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
        op = c.operations.new("template-import", checked["name"])

        async def imported() -> dict:
            c.templates.building.add(checked["name"])
            try:
                rec = await asyncio.to_thread(c.transfers.import_template, checked, op)
            finally:
                c.templates.building.discard(checked["name"])
            c.db.add_template(rec)
            return {"name": rec.name, "size": rec.size, "built_at": rec.built_at,
                    "dropped_devices": checked.get("dropped_devices", 0)}

        return await accepted(request, c.operations.start("template-import", checked["name"], imported(), op))
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

        async def from_instance() -> dict:
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

    async def work() -> dict:
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

@routes.get("/1.0/operations")
async def list_operations(request: web.Request) -> web.Response:
    return web.json_response({"operations": [o.to_json() for o in ctx(request).operations.list()]})


@routes.get("/1.0/operations/{id}")
async def get_operation(request: web.Request) -> web.Response:
    return web.json_response({"operation": ctx(request).operations.get(request.match_info["id"]).to_json()})


@routes.delete("/1.0/operations/{id}")
async def cancel_operation(request: web.Request) -> web.Response:
    """Ask a running operation to stop (template builds stop; others finish their step)."""
    op = ctx(request).operations.get(request.match_info["id"])
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
    op = await ctx(request).operations.wait(request.match_info["id"], timeout)
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

@routes.get("/1.0/networks")
async def list_networks(request: web.Request) -> web.Response:
    c = ctx(request)
    return web.json_response({"networks": [c.network.view(n) for n in c.db.list_networks()]})


@routes.post("/1.0/networks")
async def create_network(request: web.Request) -> web.Response:
    c = ctx(request)
    checked = await asyncio.to_thread(c.network.check_create_network, await json_body(request))
    return web.json_response({"network": await asyncio.to_thread(c.network.create_network, checked)}, status=201)


@routes.get("/1.0/networks/{name}")
async def get_network(request: web.Request) -> web.Response:
    c = ctx(request)
    return web.json_response({"network": c.network.view(c.network.network(request.match_info["name"]))})


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
    return web.json_response({"snapshots": c.instances.snapshots(rec)})


@routes.post("/1.0/instances/{ref}/snapshots")
async def create_snapshot(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = validate.body_fields(await json_body(request), {"name"}, {"name"})
    snap = c.instances.snapshot_name(body["name"])
    if snap in c.instances.snapshots(rec):
        raise Conflict(f"{rec.name} already has a snapshot {snap!r}; choose another name or delete it")
    return await accepted(request, c.operations.start("snapshot", rec.name, c.instances.snapshot(rec, snap)))


@routes.delete("/1.0/instances/{ref}/snapshots/{snap}")
async def delete_snapshot(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    snap = c.instances.snapshot_name(request.match_info["snap"])
    await c.instances.delete_snapshot(rec, snap)
    return web.json_response({"deleted": snap})


@routes.post("/1.0/instances/{ref}/rollback")
async def rollback(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = validate.body_fields(await json_body(request), {"snapshot", "restart"}, {"snapshot"})
    snap = c.instances.snapshot_name(body["snapshot"])
    restart = validate.boolean(body, "restart")
    c.instances.check_rollback(rec, snap, restart)
    return await accepted(request, c.operations.start("rollback", rec.name, c.instances.rollback(rec, snap, restart)))


@routes.post("/1.0/instances/{ref}/clone")
async def clone(request: web.Request) -> web.Response:
    c = ctx(request)
    src = c.instances.get(request.match_info["ref"])
    checked = c.instances.check_clone(src, await json_body(request))
    return await accepted(request, c.operations.start("clone", checked.name, c.instances.clone(checked)))


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
    op = c.operations.new("backup", rec.name)
    return await accepted(request, c.operations.start("backup", rec.name, c.transfers.backup(rec, checked, op), op))


@routes.post("/1.0/restore")
async def restore_instance(request: web.Request) -> web.Response:
    c = ctx(request)
    checked = await asyncio.to_thread(c.transfers.check_restore, await json_body(request))
    op = c.operations.new("restore", checked.name)
    return await accepted(request, c.operations.start("restore", checked.name, c.transfers.restore(checked, op), op))


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
