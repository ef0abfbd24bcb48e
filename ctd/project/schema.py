"""The OpenAPI description of /1.0/projects (ctd/project/api.py), merged into /1.0/openapi.json."""

from __future__ import annotations

from ctd.api.openapi import OBJECT, Schema, responses
from ctd.project.model import LIMITS, NAME_RE


def schema_paths() -> Schema:
    """The OpenAPI description of the routes above (merged into /1.0/openapi.json)."""
    def ok(status: int = 200) -> Schema:
        return responses(status, OBJECT, 400, 403, 404, 409)

    limits = {"type": "object", "additionalProperties": False,
              "properties": {k: {"description": v, "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"},
                                                             {"type": "null"}]} for k, v in LIMITS.items()}}
    fields = {"description": {"type": "string", "maxLength": 255}, "limits": limits,
              "allow_exec": {"type": "boolean"},
              "templates": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]}}
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[a-z][a-z0-9]{0,30}$"}}
    return {
        "/1.0/projects": {
            "get": {"summary": "projects (an operator or tenant: its own), with limits and usage", "responses": ok()},
            "post": {"summary": "create a project (admin)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["name"], "additionalProperties": False,
                         "properties": {"name": {"type": "string", "pattern": NAME_RE.pattern}, **fields}}}}},
                     "responses": ok(201)},
        },
        "/1.0/projects/{name}": {
            "parameters": [name],
            "get": {"summary": "a project: limits, usage, instances, what its tenants may do", "responses": ok()},
            "patch": {"summary": "change a project's limits and settings (admin)",
                      "requestBody": {"required": True, "content": {"application/json": {"schema": {
                          "type": "object", "additionalProperties": False, "properties": fields}}}},
                      "responses": ok()},
            "delete": {"summary": "delete a project without instances; its tokens and certificates are revoked "
                                  "(admin)", "responses": ok()},
        },
    }
