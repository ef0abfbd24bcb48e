"""`ctctl cluster evacuate NODE` and `ctctl cluster restore NODE` (docs/cluster.md, "Evacuating
a node"; Incus's `cluster evacuate`).

Evacuate marks the node in etcd (`/ctd/evacuating/NAME`): placement gives it no room, so no new
instance lands there, and `cluster list` shows the mark. Then the node migrates each of its
instances, one at a time, to the node placement chooses for it (ctd/cluster/migrate.py: a running
one arrives running, a stopped one stopped). One that cannot move (a paused container, a VM with UEFI/TPM
that runs, no node with room, a refusal of the target) stays where it was, running if it ran, and the others go
on; the operation's result reports each instance, and `ctctl` exits non-zero naming the ones that
stayed. The mark stays until `cluster restore NODE`, which moves nothing back.

The migrations run on the node being evacuated (the source of each): a request made on another
member is forwarded there (admins only, as all of /1.0/cluster), and waits for its end.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

from aiohttp import web

from ctd import validate
from ctd.api.context import ApiContext
from ctd.api.handlers import accepted, ctx
from ctd.api.jsonbody import json_body
from ctd.cluster import keys, migrate, placement, vm_migrate
from ctd.cluster.api import _node, _node_name
from ctd.errors import CtdError, NotFound
from ctd.operations import Operation
from ctd.state import InstanceRecord, InstanceType

log = logging.getLogger("ctd.cluster.evacuate")
routes = web.RouteTableDef()


async def _member(c: ApiContext, name: str) -> None:
    assert c.cluster is not None
    c.cluster.require_member("evacuate or restore nodes")
    if await c.cluster.etcd.get(keys.node(name)) is None:
        raise NotFound(f"no node {name!r} in the cluster; 'ctctl cluster list' shows them")


async def evacuate(c: ApiContext, op: Operation) -> dict[str, Any]:
    """Every instance of this node migrated to the node placement chooses (the operation's work)."""
    cluster = c.cluster
    assert cluster is not None
    moved: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    records = sorted(c.db.list_instances(), key=lambda r: r.name)
    for number, rec in enumerate(records, 1):
        op.progress = f"{number}/{len(records)}: {rec.name}"
        try:
            node = await cluster.place(placement.needs_of(rec.limits), None)   # never this node: it is marked
            result = await _move(c, rec, node, op)
        except CtdError as exc:
            log.warning("evacuating %s: %s stays here: %s", cluster.name, rec.name, exc.message)
            failed.append({"instance": rec.name, "error": exc.message})
            continue
        moved.append({"instance": rec.name, "node": node, "was_running": result["was_running"],
                      "downtime": result["downtime"]})
    log.info("evacuated %s: %d instance(s) moved, %d stayed", cluster.name, len(moved), len(failed))
    return {"node": cluster.name, "moved": moved, "failed": failed}


async def _move(c: ApiContext, rec: InstanceRecord, node: str, op: Operation) -> dict[str, Any]:
    """One instance migrated as `ctctl migrate` would (a VM by its own path, live if it runs)."""
    if rec.type is InstanceType.VM:
        vm_migrate.check(c, rec)
        migrate.claim(rec)
        return await vm_migrate.migrate_vm(c, rec, node, op)   # releases the claim itself
    migrate.check(c, rec)
    migrate.claim(rec)
    try:
        session = await migrate.begin(c, rec, node)
    except BaseException:
        migrate.MIGRATING.discard(rec.id)
        raise
    return await migrate.migrate(c, rec, session, op)


@routes.post("/1.0/cluster/nodes/{name}/evacuate")
async def cluster_evacuate(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    cluster = _node(request)
    name = _node_name(request.match_info["name"])
    validate.body_fields(await json_body(request), set())
    await _member(c, name)
    await cluster.etcd.put(keys.evacuating(name), b'{"by": "evacuate"}')   # placement skips it from now on
    if name != cluster.name:   # its migrations run there: forwarded (an admin's request), waited for
        query = urllib.parse.urlencode({**request.query, "wait": "true"})
        reply = await cluster.forward(name, "POST", f"{request.path}?{query}", b"{}", "application/json")
        return web.Response(body=reply.body, status=reply.status,
                            headers={"Content-Type": reply.content_type, "X-Ctd-Node": name})
    op = c.operations.new("evacuate", name)
    return await accepted(request, c.operations.start("evacuate", name, evacuate(c, op), op))


@routes.post("/1.0/cluster/nodes/{name}/restore")
async def cluster_restore(request: web.Request) -> web.Response:
    c = ctx(request)
    cluster = _node(request)
    name = _node_name(request.match_info["name"])
    validate.body_fields(await json_body(request), set())
    await _member(c, name)
    await cluster.etcd.delete(keys.evacuating(name))
    cluster.poke()
    return web.json_response({"node": name, "evacuating": False,
                              "note": "instances do not move back; 'ctctl migrate NAME --to "
                                      f"{name}' moves one"})
