"""Who manages firewalls and forwards, over real HTTPS with tokens: a tenant its instance's
firewall (rules, policies, enable), never a port forward (a host port) nor a field the table
does not name; each refusal leaves the state as it was."""
from __future__ import annotations

from tests.conftest import Daemon
from tests.host.test_roles import daemon, token  # noqa: F401 (daemon: the HTTPS daemon fixture)


def test_a_tenant_manages_its_firewall_but_no_forward(daemon: Daemon) -> None:  # noqa: F811
    name = daemon.unique("fwt")
    daemon.ok("create", name, "--template", "busybox")
    tenant = token(daemon, "fwcustomer", "tenant")
    fw = f"/1.0/instances/{name}/firewall"
    try:
        added = tenant.ok("POST", fw + "/rules", {"direction": "in", "proto": "tcp", "port": "22",
                                                  "from": "203.0.113.0/24", "action": "accept"})["rule"]
        tenant.ok("PATCH", fw, {"enabled": True, "policy_in": "drop"})
        got = tenant.ok("GET", fw)["firewall"]
        assert got["enabled"] and got["policy_in"] == "drop" and [r["id"] for r in got["rules"]] == [added["id"]]
        # a field the table does not name (here: the anti-spoofing switch) needs an admin
        tenant.denied("PATCH", fw, {"filter": False}, "role tenant may not", "'filter'")
        tenant.denied("POST", "/1.0/networks/any/forwards", {"host_port": 22, "instance": name, "port": 22},
                      "role tenant may not", "forward a host port")
        tenant.denied("GET", "/1.0/networks/any/forwards", None, "role tenant may not")
        status, _, body = tenant.call("DELETE", fw + "/rules/999999")
        assert status == 404 and "no firewall rule" in body["error"]
        tenant.ok("DELETE", fw + f"/rules/{added['id']}")
        assert daemon.client.get(fw)["firewall"]["rules"] == []
    finally:
        daemon.ctl("destroy", "--force", name)
        daemon.ctl("token", "revoke", "fwcustomer")
