"""The OpenAPI description of a NIC and of the NIC routes (ctd/api/nics_api.py)."""

from __future__ import annotations

from ctd.api.openapi import OBJECT, Schema, responses
from ctd.network.nics import MAX_MTU, MAX_NICS

BASE = "/1.0/instances/{ref}/nics"

NIC_SCHEMA: Schema = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "network": {"type": "string", "description": "default: ctd's default network (bridged)"},
        "mode": {"type": "string", "enum": ["bridged", "routed"]},
        "addresses": {"type": "array", "items": {"type": "string"},
                      "description": "default: the next free address of each of the network's subnets"},
        "filter": {"type": "boolean", "description": "anti-spoofing (default true; false is an admin's)"},
        "rate": {"type": "string", "description": "bandwidth both ways, e.g. 10mbit"},
        "mtu": {"type": "integer", "minimum": 576, "maximum": MAX_MTU,
                "description": "at most the network's MTU (default: the network's)"},
        "vlan": {"type": "integer", "minimum": 1, "maximum": 4094,
                 "description": "a bridged NIC's VLAN: tagged on its host port, untagged inside"}}}

def schema_paths() -> Schema:
    """The OpenAPI description of the routes above (merged into /1.0/openapi.json)."""
    def ok(status: int = 200) -> Schema:
        return responses(status, OBJECT, 400, 403, 404, 409)

    ref = {"name": "ref", "in": "path", "required": True, "description": "instance name or numeric id",
           "schema": {"type": "string"}}
    return {
        BASE: {
            "parameters": [ref],
            "post": {"summary": f"add a NIC (at most {MAX_NICS}): live on a running container, at next start "
                                "on a stopped instance; 409 on a running VM",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/Nic"}}}},
                     "responses": ok(201)},
        },
        BASE + "/{nic}": {
            "parameters": [ref, {"name": "nic", "in": "path", "required": True, "description": "eth<n>",
                                 "schema": {"type": "string", "pattern": "^eth[0-9]{1,2}$"}}],
            "delete": {"summary": "remove a NIC; its addresses go back to the network's pool", "responses": ok()},
        },
    }
