"""The OpenAPI description of the migration routes (ctd/cluster/migrate_api.py), merged into
/1.0/openapi.json."""

from __future__ import annotations


def schema_paths() -> dict[str, object]:
    error = {"description": "error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}

    def ok(status: int = 200) -> dict[str, object]:
        return {str(status): {"description": "success", "content": {"application/json": {
            "schema": {"type": "object"}}}}, "400": error, "403": error, "404": error, "409": error, "503": error}

    node = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
    sid = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}]
    peer = " (the source node only, with its certificate)"
    return {
        "/1.0/instances/{ref}/migrate": {
            "parameters": [{"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": {"summary": "move a container to another node (an operation; its result gives the rounds "
                                "sent and, for a running one, the downtime) (admin)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["to"], "additionalProperties": False,
                         "properties": {"to": node}}}}},
                     "responses": ok(202)}},
        "/1.0/cluster/migrations": {
            "post": {"summary": "begin receiving a migration: the backup-style header and the instance's id" + peer,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["header", "id"],
                         "properties": {"header": {"type": "object"}, "id": {"type": "integer"},
                                        "project": {"type": "string"},
                                        "macs": {"type": "array", "items": {"type": "string"}},
                                        "snapshots": {"type": "array", "maxItems": 64, "items": node,
                                                      "description": "the snapshots sent first, oldest first"},
                                        "usage": {"type": "integer", "minimum": 0,
                                                  "description": "the root's disk use (bytes): the target "
                                                                 "checks its pool has room"}}}}}},
                     "responses": ok(201)}},
        "/1.0/cluster/migrations/{id}/stream": {
            "parameters": sid,
            "put": {"summary": "one btrfs send stream (chunked), checked as a backup's" + peer,
                    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {
                        "type": "string", "format": "binary"}}}},
                    "responses": ok()}},
        "/1.0/cluster/migrations/{id}/finish": {
            "parameters": sid,
            "post": {"summary": "make the instance from the last stream, started if asked" + peer,
                     "requestBody": {"required": False, "content": {"application/json": {"schema": {
                         "type": "object", "additionalProperties": False,
                         "properties": {"start": {"type": "boolean"}}}}}},
                     "responses": ok()}},
        "/1.0/cluster/migrations/{id}/done": {
            "parameters": sid,
            "post": {"summary": "the source moved the keys in etcd: the instance is this node's" + peer,
                     "responses": ok()}},
        "/1.0/cluster/migrations/{id}": {
            "parameters": sid,
            "delete": {"summary": "abort: everything the migration made here is removed" + peer,
                       "responses": ok()}},
    }
