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
    # 8: administrative flags: disabled (with its reason), protected, description, tags
    """
    ALTER TABLE instances ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE instances ADD COLUMN disabled_reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE instances ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE instances ADD COLUMN description TEXT NOT NULL DEFAULT '';
    ALTER TABLE instances ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
    """,
    # 9: autostart after a host boot: per instance onboot/order/delay; per host boot (the kernel's
    # boot id) the sequence's progress, so a ctd killed during it resumes without starting an
    # instance twice
    """
    ALTER TABLE instances ADD COLUMN onboot INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE instances ADD COLUMN boot_order INTEGER NOT NULL DEFAULT 10000;
    ALTER TABLE instances ADD COLUMN boot_delay INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE boot_runs (
        boot_id     TEXT PRIMARY KEY,
        started_at  TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE TABLE boot_steps (
        boot_id     TEXT NOT NULL REFERENCES boot_runs(boot_id) ON DELETE CASCADE,
        instance_id INTEGER NOT NULL,
        name        TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        at          REAL NOT NULL,
        detail      TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (boot_id, instance_id)
    );
    """,
    # 10: per-instance stop timeout (seconds a stop waits before it kills; NULL: the server's)
    """
    ALTER TABLE instances ADD COLUMN stop_timeout INTEGER;
    """,
    # 11: a firewall per instance (settings
    # and rules, in the order added) and port forwards on NAT networks
    """
    CREATE TABLE firewall_settings (
        instance_id INTEGER PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
        enabled     INTEGER NOT NULL DEFAULT 0,
        policy_in   TEXT NOT NULL DEFAULT 'accept',
        policy_out  TEXT NOT NULL DEFAULT 'accept'
    );
    CREATE TABLE firewall_rules (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
        direction   TEXT NOT NULL,
        proto       TEXT NOT NULL,
        port_lo     INTEGER,
        port_hi     INTEGER,
        src         TEXT,
        dst         TEXT,
        action      TEXT NOT NULL,
        comment     TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX firewall_rules_instance ON firewall_rules(instance_id);
    CREATE TABLE forwards (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        network     TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
        host_addr   TEXT,
        host_port   INTEGER NOT NULL,
        proto       TEXT NOT NULL,
        instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
        port        INTEGER NOT NULL
    );
    """,
    # 12: scheduled backups: per instance the schedule, how many backups to keep and when the
    # next run is due; every backup made into the node's backup_dir (chains: kind, parent)
    """
    CREATE TABLE backup_schedules (
        instance_id INTEGER PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
        schedule    TEXT NOT NULL DEFAULT '',
        keep        INTEGER NOT NULL DEFAULT 7,
        next_due    REAL
    );
    CREATE TABLE backups (
        id          TEXT PRIMARY KEY,
        instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
        file        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        parent      TEXT,
        created     REAL NOT NULL,
        size        INTEGER NOT NULL,
        scheduled   INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX backups_of_instance ON backups (instance_id, created);
    """,
    # 13: container features (a JSON list of names: "tun", "fuse"); none for existing instances
    """
    ALTER TABLE instances ADD COLUMN features TEXT NOT NULL DEFAULT '[]';
    """,
    # 14: host directories bound into a container (a JSON list of {source, target, readonly, idmap})
    """
    ALTER TABLE instances ADD COLUMN mounts TEXT NOT NULL DEFAULT '[]';
    """,
    # 15: projects (tenants) with their limits and what they allow
    # tenants; every instance and network belongs to one ('default' always exists)
    """
    CREATE TABLE projects (
        name        TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        limits      TEXT NOT NULL DEFAULT '{}',
        allow_exec  INTEGER NOT NULL DEFAULT 0,
        templates   TEXT,
        created_at  TEXT NOT NULL
    );
    INSERT INTO projects (name, created_at) VALUES ('default', strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now'));
    ALTER TABLE instances ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE networks ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
    """,
    # 16: per NIC an MTU (NULL: its network's) and a VLAN tag
    # (NULL: untagged); per network whether ctd runs dnsmasq on it (networks made before: off)
    """
    ALTER TABLE nics ADD COLUMN mtu INTEGER;
    ALTER TABLE nics ADD COLUMN vlan INTEGER;
    ALTER TABLE networks ADD COLUMN dhcp INTEGER NOT NULL DEFAULT 0;
    """,
]
