"""The firewall of each instance as the API sees it: view (settings, rules, counters), add and
delete rules, change the settings. Each change is written to the state, then into ctd's nft
tables when the instance runs; if nft refuses it, the state is put back (nothing changed).

The rules themselves and how a tenant could abuse them: firewall.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ctd.network import firewall, fwstore, nft
from ctd.network.plumbing import Plumbing
from ctd.state import InstanceRecord, StateDB


class Firewalls:
    def __init__(self, db: StateDB, plumbing: Plumbing, nft_table: str) -> None:
        self.db = db
        self.plumbing = plumbing
        self.nft_table = nft_table

    def view(self, rec: InstanceRecord) -> dict[str, Any]:
        """Settings, rules and counters (packets and bytes since the instance's NICs were last
        filtered: counters start at 0 at each start of the instance and of ctd)."""
        settings = fwstore.settings(self.db, rec.id)
        live = settings.enabled and rec.id in self.plumbing.netns
        values = nft.counter_values(self.nft_table) if live else {}
        rules = []
        for rule in fwstore.rules(self.db, rec.id):
            packets, size = values.get(firewall.rule_counter(rule), (0, 0))
            rules.append({**rule.view(), "packets": packets, "bytes": size})
        policy = {}
        for direction in firewall.DIRECTIONS:
            packets, size = values.get(firewall.policy_counter(rec.id, direction), (0, 0))
            policy[direction] = {"packets": packets, "bytes": size}
        return {**settings.view(), "active": live, "rules": rules, "policy_counters": policy}

    def add_rule(self, rec: InstanceRecord, body: Any) -> dict[str, Any]:
        rule = fwstore.add_rule(self.db, firewall.check_rule(rec.id, body))
        try:
            self.plumbing.refirewall(rec.id)
        except BaseException:
            fwstore.delete_rule(self.db, rec.id, rule.id)
            raise
        return rule.view()

    def delete_rule(self, rec: InstanceRecord, rule_id: int) -> None:
        kept = {r.id: r for r in fwstore.rules(self.db, rec.id)}
        fwstore.delete_rule(self.db, rec.id, rule_id)
        try:
            self.plumbing.refirewall(rec.id)
        except BaseException:
            self._put_back(kept[rule_id])
            raise

    def _put_back(self, rule: firewall.FirewallRule) -> None:
        self.db.conn.execute(
            "INSERT INTO firewall_rules (id, instance_id, direction, proto, port_lo, port_hi, src, dst, action, "
            "comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", dataclasses.astuple(rule))

    def configure(self, rec: InstanceRecord, body: Any) -> dict[str, Any]:
        before = fwstore.settings(self.db, rec.id)
        fwstore.save_settings(self.db, rec.id, firewall.check_settings(body, before))
        try:
            self.plumbing.refirewall(rec.id)
        except BaseException:
            fwstore.save_settings(self.db, rec.id, before)
            raise
        return self.view(rec)
