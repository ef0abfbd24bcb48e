"""The OpenAPI description of the replication routes (ctd/cluster/replicate_api.py), merged into
/1.0/openapi.json."""

from __future__ import annotations


def schema_paths() -> dict[str, object]:
    error = {"description": "error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}

    def ok(status: int = 200) -> dict[str, object]:
        return {str(status): {"description": "success", "content": {"application/json": {
            "schema": {"type": "object"}}}}, "400": error, "403": error, "404": error, "409": error, "503": error}

    ref = [{"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}}]
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    peer = " (the instance's owner node only, with its certificate)"
    return {
        "/1.0/instances/{ref}/replication": {
            "parameters": ref,
            "put": {"summary": "replicate a container to another node every interval; to \"\" stops it; ha: "
                               "started on that node when this one goes offline (admin)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"to": {"type": "string"}, "every": {"type": ["string", "integer"]},
                                       "ha": {"type": "boolean"}}}}}},
                    "responses": ok()}},
        "/1.0/instances/{ref}/replication/sync": {
            "parameters": ref,
            "post": {"summary": "one replication round now (an operation) (admin)", "responses": ok(202)}},
        "/1.0/cluster/replicas": {
            "get": {"summary": "every replication of the cluster: target, interval, HA, last replicated, lag "
                               "(admin)", "responses": ok()}},
        "/1.0/cluster/replicas/{name}": {
            "parameters": name,
            "get": {"summary": "the generation of the replica this node keeps" + peer, "responses": ok()},
            "post": {"summary": "announce a round (query gen, parent): its backup-style header" + peer,
                     "parameters": [{"name": "gen", "in": "query", "required": True, "schema": {"type": "string"}},
                                    {"name": "parent", "in": "query", "schema": {"type": "string"}}],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["header", "id"]}}}},
                     "responses": ok(201)}},
        "/1.0/cluster/replicas/{name}/stream": {
            "parameters": name,
            "put": {"summary": "the announced round's btrfs send stream (chunked), checked as a backup's" + peer,
                    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {
                        "type": "string", "format": "binary"}}}},
                    "responses": ok()}},
    }
