"""What a project allows its tenants beyond the role table (ctd/remote/policy.py): read from the
project's settings (ctctl project set P --allow-exec, --templates ...; ctd/project/).

- exec: only where the project's `allow_exec` is on (off by default).
- reinstall: from the project's `templates` list when it has one; without one, only from a
  template built from one of the host's recipes (a distribution): not from one made of an
  instance or imported from a file, which may hold another customer's data.
Both are asked only for a tenant; an operator and an admin are not limited here.

Contract: exec_allowed(app, project) -> bool; template_allowed(app, project, template) -> bool.
Neither raises; an unknown project allows nothing.
"""

from __future__ import annotations

from aiohttp import web

from ctd.errors import CtdError


def exec_allowed(app: web.Application, project: str) -> bool:
    """May a tenant of `project` run commands in its instances (ctctl exec)?"""
    from ctd.api.handlers import CTX  # the daemon's context (its projects)
    try:
        return app[CTX].projects.exec_allowed(project)
    except (KeyError, CtdError):   # no context
        return False


def template_allowed(app: web.Application, project: str, template: str) -> bool:
    """May a tenant of `project` reinstall an instance from `template`?"""
    from ctd.api.handlers import CTX  # the daemon's context (its projects and templates)
    try:
        return app[CTX].projects.template_allowed(project, template)
    except (KeyError, OSError, CtdError):   # no context, or a recipe directory that cannot be read
        return False
