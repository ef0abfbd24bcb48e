"""The firewall of each instance in ctd's state (tables firewall_settings, firewall_rules).

Rules are kept in the order they were added (their ids only grow, so a deleted rule's counter
name is never reused); both tables go with the instance (ON DELETE CASCADE).
"""

from __future__ import annotations

import dataclasses

from ctd.errors import InvalidRequest, NotFound
from ctd.network.firewall import MAX_RULES, FirewallRule, Settings
from ctd.state import StateDB


def settings(db: StateDB, instance_id: int) -> Settings:
    row = db.conn.execute("SELECT enabled, policy_in, policy_out FROM firewall_settings WHERE instance_id = ?",
                          (instance_id,)).fetchone()
    return Settings(bool(row[0]), row[1], row[2]) if row else Settings()


def save_settings(db: StateDB, instance_id: int, value: Settings) -> None:
    db.conn.execute("INSERT OR REPLACE INTO firewall_settings (instance_id, enabled, policy_in, policy_out) "
                    "VALUES (?, ?, ?, ?)", (instance_id, int(value.enabled), value.policy_in, value.policy_out))


def rules(db: StateDB, instance_id: int) -> list[FirewallRule]:
    rows = db.conn.execute("SELECT id, instance_id, direction, proto, port_lo, port_hi, src, dst, action, comment "
                           "FROM firewall_rules WHERE instance_id = ? ORDER BY id", (instance_id,))
    return [FirewallRule(*row) for row in rows]


def add_rule(db: StateDB, rule: FirewallRule) -> FirewallRule:
    count = db.conn.execute("SELECT COUNT(*) FROM firewall_rules WHERE instance_id = ?",
                            (rule.instance_id,)).fetchone()[0]
    if count >= MAX_RULES:
        raise InvalidRequest(f"an instance has at most {MAX_RULES} firewall rules; delete some first")
    cursor = db.conn.execute(
        "INSERT INTO firewall_rules (instance_id, direction, proto, port_lo, port_hi, src, dst, action, comment) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (rule.instance_id, rule.direction, rule.proto, rule.port_lo,
                                               rule.port_hi, rule.src, rule.dst, rule.action, rule.comment))
    return dataclasses.replace(rule, id=int(cursor.lastrowid or 0))


def delete_rule(db: StateDB, instance_id: int, rule_id: int) -> None:
    """NotFound when instance_id has no rule rule_id (another instance's rule is not found)."""
    cursor = db.conn.execute("DELETE FROM firewall_rules WHERE instance_id = ? AND id = ?", (instance_id, rule_id))
    if cursor.rowcount == 0:
        raise NotFound(f"no firewall rule {rule_id} on this instance; 'ctctl firewall NAME list' shows them")
