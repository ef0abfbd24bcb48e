"""The projects API: /1.0/projects (ctctl project ...).

Contract: create, set and delete need an admin (ctd/remote/policy.py); list and show answer an
operator or tenant with its own project only, and another project's name gets the 404 an unknown
name gets. Deleting a project with instances is refused ("delete or move them first": a move is
a backup restored into another project); deleting one revokes its API tokens, trusted
certificates and join tokens, so that a later project of the same name does not inherit them.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ctd.api.handlers import CTX
from ctd.api.jsonbody import json_body
from ctd.errors import NotFound
from ctd.project.model import Project
from ctd.remote.api import ACCESS
from ctd.remote.scope import sees

log = logging.getLogger("ctd.project")
routes = web.RouteTableDef()


def _visible(request: web.Request, name: str) -> Project:
    project = request.app[CTX].projects.store.get(name)
    if project is None or not sees(request, project.name):
        raise NotFound(f"no project named {name!r}; 'ctctl project list' shows them")
    return project


@routes.get("/1.0/projects")
async def list_projects(request: web.Request) -> web.Response:
    projects = request.app[CTX].projects
    return web.json_response({"projects": [projects.view(p) for p in projects.store.list()
                                           if sees(request, p.name)]})


@routes.post("/1.0/projects")
async def create_project(request: web.Request) -> web.Response:
    project = request.app[CTX].projects.create(await json_body(request))
    log.info("project %s created (limits %s)", project.name, project.limits)
    return web.json_response({"project": request.app[CTX].projects.view(project)}, status=201)


@routes.get("/1.0/projects/{name}")
async def show_project(request: web.Request) -> web.Response:
    return web.json_response({"project": request.app[CTX].projects.view(_visible(request, request.match_info["name"]))})


@routes.patch("/1.0/projects/{name}")
async def set_project(request: web.Request) -> web.Response:
    projects = request.app[CTX].projects
    project = projects.update(_visible(request, request.match_info["name"]).name, await json_body(request))
    return web.json_response({"project": projects.view(project)})


@routes.delete("/1.0/projects/{name}")
async def delete_project(request: web.Request) -> web.Response:
    name = _visible(request, request.match_info["name"]).name
    request.app[CTX].projects.delete(name)
    revoked = 0
    access = request.app.get(ACCESS)
    if access is not None:
        revoked = access.tokens.forget_project(name) + (access.trust.forget_project(name) if access.trust else 0)
    log.info("project %s deleted; %d token(s) and certificate(s) of it revoked", name, revoked)
    return web.json_response({"deleted": name, "revoked": revoked})
