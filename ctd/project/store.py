"""The projects table (migration 11): read and write Project rows. Event-loop thread only."""

from __future__ import annotations

import builtins
import datetime as dt
import json
import sqlite3

from ctd.errors import Conflict, NotFound
from ctd.project.model import DEFAULT, Project
from ctd.state import StateDB


def _project(row: sqlite3.Row) -> Project:
    templates = row["templates"]
    return Project(name=row["name"], description=row["description"], limits=json.loads(row["limits"]),
                   allow_exec=bool(row["allow_exec"]),
                   templates=None if templates is None else json.loads(templates), created_at=row["created_at"])


class ProjectStore:
    def __init__(self, db: StateDB) -> None:
        self.conn = db.conn

    def get(self, name: str) -> Project | None:
        row = self.conn.execute("SELECT * FROM projects WHERE name = ?", (name,)).fetchone()
        return _project(row) if row else None

    def require(self, name: str) -> Project:
        project = self.get(name)
        if project is None:
            raise NotFound(f"no project named {name!r}; 'ctctl project list' shows them")
        return project

    def list(self) -> list[Project]:
        return [_project(r) for r in self.conn.execute("SELECT * FROM projects ORDER BY name")]

    def names(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM projects")}

    def add(self, project: Project) -> Project:
        project = project.with_changes(created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        try:
            self.conn.execute(
                "INSERT INTO projects (name, description, limits, allow_exec, templates, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (project.name, project.description, json.dumps(project.limits), int(project.allow_exec),
                 None if project.templates is None else json.dumps(project.templates), project.created_at))
        except sqlite3.IntegrityError:
            raise Conflict(f"a project named {project.name!r} exists already") from None
        return project

    def update(self, project: Project) -> None:
        self.conn.execute(
            "UPDATE projects SET description = ?, limits = ?, allow_exec = ?, templates = ? WHERE name = ?",
            (project.description, json.dumps(project.limits), int(project.allow_exec),
             None if project.templates is None else json.dumps(project.templates), project.name))

    def delete(self, name: str) -> None:
        if name == DEFAULT:
            raise Conflict("project 'default' always exists; it cannot be deleted")
        self.conn.execute("DELETE FROM projects WHERE name = ?", (name,))

    def instance_names(self, project: str) -> builtins.list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM instances WHERE project = ? ORDER BY name",
                                                (project,))]

    def addresses_by_instance(self, project: str) -> dict[int, int]:
        return {r[0]: r[1] for r in self.conn.execute(
            "SELECT a.instance_id, COUNT(*) FROM addresses a JOIN instances i ON i.id = a.instance_id "
            "WHERE i.project = ? GROUP BY a.instance_id", (project,))}
