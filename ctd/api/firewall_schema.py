"""The OpenAPI description of the firewall and forward routes (ctd/api/firewall_api.py)."""

from __future__ import annotations

from ctd.api.openapi import ERROR, OBJECT, Schema, responses
from ctd.network import firewall

BASE = "/1.0/instances/{ref}/firewall"
FORWARDS = "/1.0/networks/{name}/forwards"


def schema_paths() -> Schema:
    """The OpenAPI description of the routes above (merged into /1.0/openapi.json)."""
    def ok(status: int = 200) -> Schema:
        return responses(status, OBJECT, 400, 403, 404)

    ref = {"name": "ref", "in": "path", "required": True, "description": "instance name or numeric id",
           "schema": {"type": "string"}}
    cidr = {"type": "string", "description": "address or CIDR, IPv4 or IPv6 (both of a rule: the same version)"}
    rule = {"type": "object", "required": ["direction", "proto", "action"], "additionalProperties": False,
            "properties": {
                "direction": {"type": "string", "enum": list(firewall.DIRECTIONS),
                              "description": "in: to the instance; out: from it"},
                "proto": {"type": "string", "enum": list(firewall.PROTOS)},
                "port": {"type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$",
                         "description": "destination port or range, 1-65535 (tcp and udp only)"},
                "from": cidr, "to": cidr,
                "action": {"type": "string", "enum": list(firewall.ACTIONS)},
                "comment": {"type": "string", "maxLength": firewall.MAX_COMMENT}}}
    policy = {"type": "string", "enum": list(firewall.POLICIES)}
    settings = {"type": "object", "additionalProperties": False, "properties": {
        "enabled": {"type": "boolean"}, "policy_in": policy, "policy_out": policy}}
    net = {"name": "name", "in": "path", "required": True, "description": "network name", "schema": {"type": "string"}}
    port = {"type": "integer", "minimum": 1, "maximum": 65535}
    forward = {"type": "object", "required": ["host_port", "instance", "port"], "additionalProperties": False,
               "properties": {
                   "host_address": {"type": "string", "description": "an IPv4 address of the host (default: all)"},
                   "host_port": port, "instance": {"type": "string"}, "port": port,
                   "proto": {"type": "string", "enum": ["tcp", "udp"], "default": "tcp"}}}
    return {
        FORWARDS: {
            "parameters": [net],
            "get": {"summary": "a NAT network's port forwards", "responses": ok()},
            "post": {"summary": "forward a host port to an instance's port on the network (DNAT); 409 when the "
                                "host port is forwarded or listened on already",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": forward}}},
                     "responses": {**ok(201), "409": ERROR}},
        },
        FORWARDS + "/{id}": {
            "parameters": [net, {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "delete": {"summary": "delete a port forward", "responses": ok()},
        },
        BASE: {
            "parameters": [ref],
            "get": {"summary": "the instance's firewall: settings, rules and their packet/byte counters",
                    "responses": ok()},
            "patch": {"summary": "switch the firewall on or off, set the default policy per direction",
                      "requestBody": {"required": True, "content": {"application/json": {"schema": settings}}},
                      "responses": ok()},
        },
        BASE + "/rules": {
            "parameters": [ref],
            "post": {"summary": "add a firewall rule (after the existing ones; first match wins)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": rule}}},
                     "responses": ok(201)},
        },
        BASE + "/rules/{id}": {
            "parameters": [ref, {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "delete": {"summary": "delete one of the instance's firewall rules", "responses": ok()},
        },
    }
