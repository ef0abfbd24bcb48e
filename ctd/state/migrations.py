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
    # 2: networks, NICs and the addresses handed out (an address is unique host-wide)
    """
    CREATE TABLE networks (
        name       TEXT PRIMARY KEY,
        bridge     TEXT NOT NULL UNIQUE,
        subnet4    TEXT,
        subnet6    TEXT,
        nat        INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE nics (
        instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
        idx         INTEGER NOT NULL,
        network     TEXT REFERENCES networks(name),
        mode        TEXT NOT NULL,
        mac         TEXT NOT NULL UNIQUE,
        filter      INTEGER NOT NULL DEFAULT 1,
        rate        INTEGER,
        rx_bytes    INTEGER NOT NULL DEFAULT 0,
        tx_bytes    INTEGER NOT NULL DEFAULT 0,
        rx_packets  INTEGER NOT NULL DEFAULT 0,
        tx_packets  INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (instance_id, idx)
    );
    CREATE TABLE addresses (
        address     TEXT PRIMARY KEY,
        instance_id INTEGER NOT NULL,
        idx         INTEGER NOT NULL,
        network     TEXT,
        FOREIGN KEY (instance_id, idx) REFERENCES nics(instance_id, idx) ON DELETE CASCADE
    );
    """,
    # 3: per-instance options from the template (systemd guest, network style) and the
    # public ssh keys ctd keeps to put back on reinstall
    """
    ALTER TABLE instances ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
    """,
    # 4: a network's MTU (bridge, veths and taps on it)
    """
    ALTER TABLE networks ADD COLUMN mtu INTEGER NOT NULL DEFAULT 1500;
    """,
    # 5: how an instance's last run ended (exit code, signal, OOM kill, reboot, stop by ctd)
    """
    ALTER TABLE instances ADD COLUMN last_exit TEXT NOT NULL DEFAULT '{}';
    """,
    # 6: API tokens for the HTTPS listener; only a hash of the secret is kept
    """
    CREATE TABLE api_tokens (
        name          TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL UNIQUE,
        role          TEXT NOT NULL,
        project       TEXT NOT NULL DEFAULT 'default',
        created_at    TEXT NOT NULL,
        expires_at    TEXT
    );
    """,
    # 7: TLS client certificates the HTTPS listener trusts (compared by SHA-256 fingerprint), and
    # one-time join tokens that add one (only a hash of the secret is kept)
    """
    CREATE TABLE trusted_certificates (
        fingerprint TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        role        TEXT NOT NULL,
        project     TEXT NOT NULL DEFAULT 'default',
        certificate TEXT NOT NULL,
        not_before  TEXT NOT NULL,
        not_after   TEXT NOT NULL,
        added_at    TEXT NOT NULL
    );
    CREATE TABLE trust_tokens (
        name          TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL UNIQUE,
        role          TEXT NOT NULL,
        project       TEXT NOT NULL DEFAULT 'default',
        created_at    TEXT NOT NULL,
        expires_at    TEXT NOT NULL
    );
    """,
    # 8: suspend/resume: the state 'suspended' needs no column (instances.state is TEXT); this
    # slot is kept so the day-2 migrations keep their numbers (autostart 9, admin flags 10)
    "SELECT 1;",
]
