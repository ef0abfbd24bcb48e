"""The OpenAPI description of /1.0/cluster (ctd/cluster/api.py), merged into /1.0/openapi.json."""

from __future__ import annotations


def schema_paths() -> dict[str, object]:
    """The OpenAPI description of the endpoints above (merged into /1.0/openapi.json)."""
    error = {"description": "error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}

    def ok(status: int = 200) -> dict[str, object]:
        return {str(status): {"description": "success", "content": {"application/json": {
            "schema": {"type": "object"}}}}, "400": error, "403": error, "409": error, "503": error}

    name = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
    return {
        "/1.0/cluster": {"get": {"summary": "cluster mode: this node, its membership, etcd (admin)",
                                 "responses": ok()}},
        "/1.0/cluster/init": {"post": {"summary": "make the cluster with this node as its first member (admin)",
                                       "responses": ok(201)}},
        "/1.0/cluster/nodes": {
            "get": {"summary": "the members: address, online/offline, load, free RAM/CPU/disk, version (admin)",
                    "responses": ok()},
            "post": {"summary": "a one-time join token for a new node, shown once (admin)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["name"], "additionalProperties": False,
                         "properties": {"name": name,
                                        "expires": {"type": "string", "pattern": "^[0-9]{1,6}[smhdw]$"}}}}}},
                     "responses": ok(201)},
        },
        "/1.0/cluster/join": {
            "post": {"summary": "this node joins the cluster with a token from POST /1.0/cluster/nodes (admin)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["token"], "additionalProperties": False,
                         "properties": {"token": {"type": "string", "maxLength": 1000}}}}}},
                     "responses": ok(201)},
        },
        "/1.0/cluster/nodes/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": name},
                           {"name": "force", "in": "query", "required": False, "schema": {"type": "string"}}],
            "delete": {"summary": "remove a member (an online one only with force) and free its instances' "
                                  "names (admin)", "responses": {**ok(), "404": error}},
        },
        "/1.0/cluster/nodes/{name}/evacuate": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": name}],
            "post": {"summary": "mark the node evacuating (placement skips it) and migrate each of its instances "
                                "to a node with room (an operation; its result lists what moved and what "
                                "stayed, and why) (admin)", "responses": {**ok(202), "404": error}},
        },
        "/1.0/cluster/nodes/{name}/restore": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": name}],
            "post": {"summary": "clear a node's evacuating mark (its instances do not move back) (admin)",
                     "responses": {**ok(), "404": error}},
        },
    }
