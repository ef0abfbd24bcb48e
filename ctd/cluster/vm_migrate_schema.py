"""The OpenAPI description of a VM migration's receiving routes (ctd/cluster/vm_migrate_api.py),
merged into /1.0/openapi.json."""

from __future__ import annotations


def schema_paths() -> dict[str, object]:
    """Their OpenAPI description (merged into /1.0/openapi.json)."""
    error = {"description": "error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}
    ok = {"200": {"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}},
          "400": error, "403": error, "404": error, "409": error}
    sid = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}]
    peer = " (the source node only, with its certificate)"
    return {
        "/1.0/cluster/vm-migrations": {
            "post": {"summary": "begin receiving a VM: backup-style header, id, MACs, data disks, files and sizes"
                                + peer,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["header", "id", "files", "data"]}}}},
                     "responses": {**ok, "201": ok["200"]}}},
        "/1.0/cluster/vm-migrations/{id}/file": {
            "parameters": [*sid, {"name": "name", "in": "query", "required": True, "schema": {"type": "string"}}],
            "put": {"summary": "one announced file as sparse records (offset, length, data)" + peer,
                    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {
                        "type": "string", "format": "binary"}}}},
                    "responses": ok}},
        "/1.0/cluster/vm-migrations/{id}/finish": {
            "parameters": sid, "post": {"summary": "make the VM from the files, stopped" + peer, "responses": ok}},
        "/1.0/cluster/vm-migrations/{id}/resume": {
            "parameters": sid, "post": {"summary": "a live migration arrived: the guest runs here" + peer,
                                        "responses": ok}},
        "/1.0/cluster/vm-migrations/{id}/tunnel": {
            "parameters": [*sid, {"name": "to", "in": "query", "required": True,
                                  "schema": {"type": "string", "enum": ["nbd", "migrate"]}}],
            "get": {"summary": "a WebSocket carrying one of QEMU's streams (NBD or migration)" + peer,
                    "responses": ok}},
        "/1.0/cluster/vm-migrations/{id}/done": {
            "parameters": sid, "post": {"summary": "the source moved the keys: the VM is this node's" + peer,
                                        "responses": ok}},
        "/1.0/cluster/vm-migrations/{id}": {
            "parameters": sid, "delete": {"summary": "abort: everything the migration made here goes" + peer,
                                          "responses": ok}},
    }
