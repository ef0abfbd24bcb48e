"""The firewall's rule checks and the nft it writes (pure: no kernel), the forwards' nft, and who
may call the firewall and forward routes."""
from __future__ import annotations

import pytest

from ctd.errors import InvalidRequest
from ctd.network import firewall, nft
from ctd.network.firewall import FirewallRule, NicFirewall, Settings
from ctd.remote import policy
from ctd.remote.identity import Role

INST = "/1.0/instances/{ref}"


def rule(**body: object) -> FirewallRule:
    return firewall.check_rule(7, {"direction": "in", "proto": "tcp", "action": "drop", **body})


def test_a_good_rule_is_normalized() -> None:
    r = rule(port="8000-8080", **{"from": "203.0.113.9/24"}, comment="web")
    assert (r.port_lo, r.port_hi, r.src, r.dst, r.comment) == (8000, 8080, "203.0.113.0/24", None, "web")
    assert rule(port=22).view()["port"] == "22"


@pytest.mark.parametrize(("body", "said"), [
    ({"port": "0"}, "out of range"), ({"port": "65536"}, "out of range"), ({"port": "9-8"}, "range"),
    ({"port": "ssh"}, "invalid port"), ({"port": True}, "invalid port"),
    ({"proto": "icmp", "port": "1"}, "tcp or udp"), ({"proto": "gre"}, "invalid proto"),
    ({"proto": "icmp", "from": "fd00::/8"}, "icmpv6"), ({"proto": "icmpv6", "to": "10.0.0.1"}, "icmp "),
    ({"from": "10.0.0.0/8", "to": "fd00::1"}, "versions"), ({"from": "10.0.0.0/33"}, "invalid from"),
    ({"from": 10}, "from must be"), ({"action": "allow"}, "invalid action"), ({"direction": "both"}, "direction"),
    ({"comment": "a\nb"}, "comment"), ({"comment": "x" * 65}, "comment"), ({"table": "x"}, "table"),
])
def test_bad_rules_are_refused_naming_what(body: dict[str, object], said: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        rule(**body)
    assert said in str(caught.value)


def test_settings_keep_what_is_not_given() -> None:
    now = firewall.check_settings({"policy_in": "drop"}, Settings(enabled=True))
    assert now == Settings(True, "drop", "accept")
    for body in ({}, {"policy_out": "reject"}, {"enabled": "yes please"}):
        with pytest.raises(InvalidRequest):
            firewall.check_settings(body, now)


def nic(bridged: bool, *rules: FirewallRule, settings: Settings = Settings(True, "drop", "accept")) -> NicFirewall:
    return NicFirewall("ve7.0", bridged, 7, settings, rules)


def test_chain_order_rules_then_policy_and_flows_remembered() -> None:
    accept = FirewallRule(3, 7, "in", "tcp", 22, 22, "203.0.113.0/24", None, "accept")
    lines = firewall.chain_rules(nic(True, accept), "in", reject_ok=False)
    assert lines[0] == "ether type arp accept"
    at = next(i for i, line in enumerate(lines) if "fwr_3" in line)
    assert all("@flows" in line or "type" in line for line in lines[:at])  # replies and NDP first
    assert lines[at] == "ip saddr 203.0.113.0/24 meta l4proto tcp th dport 22 counter name fwr_3 goto fw_accept_in"
    # every accept remembers the flow of a TCP/UDP packet so its replies pass the other way
    assert firewall.accept_chain("in", True)[0] == \
        "ether type ip meta l4proto { tcp, udp } update @flows4 { ip daddr . ip saddr . meta l4proto . th dport . th sport }"
    assert firewall.accept_chain("out", False)[-1] == "accept"
    assert lines[-1] == "counter name fwp_7_in drop"                     # the policy is last
    out = firewall.chain_rules(nic(False, accept), "out", reject_ok=True)
    assert not any("fwr_3" in line for line in out)
    assert out[-1] == "counter name fwp_7_out goto fw_accept_out" and "meta nfproto ipv6" in out[0]


def test_reject_drops_where_the_bridge_family_cannot_reject() -> None:
    r = FirewallRule(4, 7, "in", "udp", 53, 53, None, None, "reject")
    assert any(line.endswith("fwr_4 drop") for line in firewall.chain_rules(nic(True, r), "in", False))
    routed = firewall.chain_rules(nic(False, r), "in", True)
    assert any("reject" in line and "fwr_4" in line for line in routed)


def test_script_keeps_counters_of_kept_rules_and_deletes_gone_ones() -> None:
    a = FirewallRule(1, 7, "in", "any", None, None, None, None, "drop")
    b = FirewallRule(2, 7, "out", "any", None, None, None, None, "drop")
    before = {"ve7.0": nic(True, a, b)}
    after = {"ve7.0": nic(True, a)}
    script = nft.firewall_script("t", before, after, False)
    assert "delete counter bridge t fwr_2" in script and "delete counter bridge t fwr_1" not in script
    assert script.index("add rule") < script.index("delete counter")
    assert 'add element bridge t fwin { "ve7.0" : jump fwi_ve7_0 }' in script
    gone = nft.firewall_script("t", after, {}, False)
    assert "delete chain bridge t fwi_ve7_0" in gone and "delete counter bridge t fwp_7_in" in gone


def test_a_comment_never_reaches_nft() -> None:
    r = firewall.check_rule(7, {"direction": "in", "proto": "any", "action": "drop", "comment": "\"; delete table"})
    assert "delete table" not in nft.firewall_script("t", {}, {"ve7.0": nic(False, r)}, True)


def test_tenant_manages_a_firewall_but_not_forwards_or_the_anti_spoofing() -> None:
    add = policy.rule_for(INST + "/firewall/rules", "POST")
    assert add.role is Role.TENANT
    assert policy.check_body(Role.TENANT, add.fields or {}, {"direction": "in", "proto": "tcp", "port": "22",
                                                             "from": "10.0.0.0/8", "action": "accept"}) is None
    for method in ("GET", "PATCH"):
        assert policy.rule_for(INST + "/firewall", method).role is Role.TENANT
    assert policy.rule_for(INST + "/firewall/rules/{id}", "DELETE").role is Role.TENANT
    assert policy.rule_for("/1.0/networks/{name}/forwards", "POST").role is Role.ADMIN
    assert policy.rule_for("/1.0/networks/{name}/forwards/{id}", "DELETE").role is Role.ADMIN
    # the anti-spoofing filter of a NIC stays the admin's to switch off
    assert policy.check_body(Role.OPERATOR, policy.NIC_FIELDS, {"filter": False}) is not None
