"""Errors of cluster mode the API handlers tell apart (importable without loading etcd's client)."""

from __future__ import annotations

from ctd.errors import Conflict


class IdTaken(Conflict):
    """The numeric id another node's instance has (chosen here from a view a moment old)."""
