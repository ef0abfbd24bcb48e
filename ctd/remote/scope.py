"""Which project's things an identity may see: the one rule every scoped view asks, and the
filter of events (GET /1.0/events).

Contract: visible(identity, project) is True for an admin (every project), for no identity at
all (the API without the remote layer: tests of the API alone), and for an operator or tenant
whose project is `project`. Everything else answers as if the thing did not exist (404 with the
body a missing name gets: docs/remote.md, "Projects"). event_visible: an admin sees every event,
host-wide ones too (project None: a boot sequence, a template build, a log line naming no
instance); an operator or tenant only its project's.
"""

from __future__ import annotations

from aiohttp import web

from ctd.events.model import Event
from ctd.remote.api import IDENTITY
from ctd.remote.identity import DEFAULT_PROJECT, Identity, Role


def visible(identity: Identity | None, project: str) -> bool:
    return identity is None or identity.role is Role.ADMIN or identity.project == project


def visible_projects(identity: Identity | None) -> frozenset[str] | None:
    """The projects visible() lets `identity` see: None for every one, else its own."""
    return None if identity is None or identity.role is Role.ADMIN else frozenset({identity.project})


def caller(request: web.Request) -> Identity | None:
    return request.get(IDENTITY)


def request_project(request: web.Request) -> str:
    """The caller's project: where its creates land (default without an identity)."""
    who = caller(request)
    return who.project if who is not None else DEFAULT_PROJECT


def is_admin(request: web.Request) -> bool:
    who = caller(request)
    return who is None or who.role is Role.ADMIN


def sees(request: web.Request, project: str) -> bool:
    return visible(caller(request), project)


def project_of(record: object) -> str:
    """The project of an instance record (or anything with a `project`); 'default' otherwise."""
    project = getattr(record, "project", DEFAULT_PROJECT)
    return project if isinstance(project, str) else DEFAULT_PROJECT


def event_visible(who: Identity | None, event: Event) -> bool:
    if who is None or who.role is Role.ADMIN:
        return True
    return event.project is not None and event.project == who.project
