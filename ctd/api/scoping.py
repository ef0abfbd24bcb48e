"""Projects on every request: an operator or tenant of project P sees and touches only P's.

Contract (a middleware after the role check, before the handler):
- A route on one instance (its path has {ref}: get, set, state, exec, console, snapshots,
  rollback, clone, backup, rename, beancounters, hardware…) whose name or numeric id is not an
  instance the caller may see answers 404 with the very body a name that does not exist gets
  (ctd/instance/manager.py no_such_instance), after the same single lookup: neither the code,
  the body nor the work done tells "another project's" from "none".
- Operations started while handling a request belong to the project of the instance it acts on
  (or the caller's); ctd/operations.py OP_PROJECT.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from ctd import validate
from ctd.api.context import INSTANCE
from ctd.api.handlers import CTX
from ctd.cluster.forward import forward_if_remote
from ctd.instance.manager import no_such_instance
from ctd.operations import OP_PROJECT
from ctd.remote.api import PROJECT
from ctd.remote.enforce import route_template
from ctd.remote.scope import request_project, sees


@web.middleware
async def scope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = route_template(request)
    OP_PROJECT.set(request_project(request))
    request[PROJECT] = request_project(request)
    if path is not None and "{ref}" in path:
        ref = validate.instance_ref(request.match_info["ref"])
        c = request.app[CTX]
        if c.cluster is not None and c.db.get_instance(ref) is None:   # another node's? asked there
            forwarded = await forward_if_remote(request, c.cluster, ref)
            if forwarded is not None:
                return forwarded
        rec = c.instances.get(ref)   # no_such_instance(ref) if there is none
        if not sees(request, rec.project):
            raise no_such_instance(ref)
        OP_PROJECT.set(rec.project)
        request[PROJECT] = rec.project
        request[INSTANCE] = rec
    return await handler(request)
