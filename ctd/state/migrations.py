"""Numbered schema migrations; PRAGMA user_version records how far a database has come."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: instances and templates
    """
    CREATE TABLE instances (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        type        TEXT NOT NULL,
        template    TEXT NOT NULL,
        hostname    TEXT NOT NULL,
        privileged  INTEGER NOT NULL DEFAULT 0,
        idmap_base  INTEGER UNIQUE,
        limits      TEXT NOT NULL DEFAULT '{}',
        state       TEXT NOT NULL DEFAULT 'stopped',
        pid         INTEGER,
        pid_start   INTEGER,
        created_at  TEXT NOT NULL,
        init        TEXT NOT NULL,
        stop_signal TEXT NOT NULL
    );
    CREATE TABLE templates (
        name      TEXT PRIMARY KEY,
        recipe    TEXT NOT NULL,
        path      TEXT NOT NULL,
        size      INTEGER NOT NULL,
        built_at  TEXT NOT NULL,
        distro    TEXT NOT NULL DEFAULT '',
        release   TEXT NOT NULL DEFAULT '',
        arch      TEXT NOT NULL DEFAULT ''
    );
    """,
]
