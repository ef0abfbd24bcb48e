"""The OpenAPI description of the REST API, served at /1.0/openapi.json."""

from __future__ import annotations

from typing import Any

from ctd import __version__
from ctd.limits import LIMITS
from ctd.remote.api import schema_paths as remote_paths
from ctd.remote.trust_api import schema_paths as trust_paths

BOOT = {"onboot": {"type": "boolean", "description": "start after a host boot (also \"yes\"/\"no\")"},
        "boot_order": {"type": "integer", "minimum": 0, "maximum": 10000,
                       "description": "lower starts first, stops last; default 10000 (after every ordered one)"},
        "boot_delay": {"type": "integer", "minimum": 0, "maximum": 3600,
                       "description": "seconds the next boot-order group waits after this one started"}}
NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$", "description": "not all digits"}
REF = {"name": "ref", "in": "path", "required": True, "description": "instance name or numeric id",
       "schema": {"type": "string", "pattern": "^([a-z0-9][a-z0-9-]{0,62})$"}}
ADMIN = {
    "disabled": {"type": "boolean", "description": "a disabled instance is not started (by anyone)"},
    "reason": {"type": "string", "maxLength": 256, "description": "why it is disabled (one printable line)"},
    "protected": {"type": "boolean", "description": "destroy, reinstall and rollback are refused"},
    "description": {"type": "string", "maxLength": 4096, "description": "printable text, newlines allowed"},
    "tags": {"type": "object", "maxProperties": 64, "description": "KEY: VALUE; set: null or \"\" removes KEY",
             "additionalProperties": {"type": "string", "maxLength": 256, "nullable": True}},
}
ERROR = {"type": "object", "required": ["error", "code"],
         "properties": {"error": {"type": "string"}, "code": {"type": "string"}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _responses(ok: int, ok_schema: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {str(ok): {"description": "success", **_json(ok_schema)}}
    for code in errors:
        out[str(code)] = {"description": "error", **_json({"$ref": "#/components/schemas/Error"})}
    return out


def build_schema() -> dict[str, Any]:
    op_resp = {"type": "object", "properties": {"operation": {"$ref": "#/components/schemas/Operation"}}}
    instance = {"$ref": "#/components/schemas/Instance"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "ctd", "version": __version__,
                 "description": "System containers and virtual machines. Long work returns an "
                                "operation; GET /1.0/operations/{id}/wait waits for it."},
        "paths": {
            "/1.0": {"get": {"summary": "server information", "responses": _responses(200, {"type": "object"})}},
            **remote_paths(),
            **trust_paths(),
            "/1.0/instances": {
                "get": {"summary": "list instances",
                        "parameters": [
                            {"name": "state", "in": "query", "schema": {"type": "string"},
                             "description": "stopped, running, … or disabled (repeatable: any of them)"},
                            {"name": "tag", "in": "query", "schema": {"type": "string"},
                             "description": "KEY=VALUE or KEY (repeatable: all of them)"}],
                        "responses": _responses(200, {"type": "object", "properties": {
                            "instances": {"type": "array", "items": instance}}})},
                "post": {"summary": "create an instance (an operation)",
                         "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/CreateInstance"})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/instances/{ref}": {
                "parameters": [REF],
                "get": {"summary": "one instance", "responses": _responses(
                    200, {"type": "object", "properties": {"instance": instance}}, 400, 404)},
                "patch": {"summary": "change limits; applied live to a running instance",
                          "requestBody": {"required": True, **_json({
                              "type": "object", "additionalProperties": False,
                              "properties": {"limits": {"$ref": "#/components/schemas/Limits"},
                                             "ipadd": {"type": "array", "items": {"type": "string"}},
                                             "ipdel": {"type": "array", "items": {"type": "string"}},
                                             "rate": {"type": "string"},
                                             "nameservers": {"type": "array", "items": {"type": "string"}},
                                             "userpasswd": {"type": "string"},
                                             "ssh_keys": {"type": "array", "items": {"type": "string"}},
                                             "timezone": {"type": "string"},
                                             "hostname": {"type": "string"},
                                             **ADMIN, "stop": {"type": "boolean", "description":
                                                               "with disabled: stop a running instance first"},
                                             **BOOT}})},
                          "responses": _responses(200, {"type": "object"}, 400, 404, 409)},
                "delete": {"summary": "destroy (an operation); refuses a running one unless force",
                           "parameters": [{"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                           "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/rename": {
                "parameters": [REF],
                "post": {"summary": "a stopped instance takes a new name (storage, snapshots and state follow)",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["name"], "additionalProperties": False,
                             "properties": {"name": NAME}})},
                         "responses": _responses(200, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/shutdown": {
                "post": {"summary": "stop every running instance in reverse boot order (an operation); "
                                    "body: {\"timeout\": seconds} (default stop_timeout)",
                         "requestBody": {"required": False, **_json({
                             "type": "object", "additionalProperties": False,
                             "properties": {"timeout": {"type": "number", "minimum": 0, "maximum": 3600}}})},
                         "responses": _responses(202, op_resp, 400)},
            },
            "/1.0/instances/{ref}/beancounters": {
                "parameters": [REF],
                "get": {"summary": "OpenVZ-style beancounters of a running instance",
                        "responses": _responses(200, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/beancounters": {
                "get": {"summary": "beancounters of every running instance",
                        "parameters": [{"name": "failing", "in": "query", "schema": {"type": "boolean"}}],
                        "responses": _responses(200, {"type": "object"}, 400)},
            },
            "/1.0/metrics": {"get": {"summary": "Prometheus metrics of every instance, the host and ctd", "responses": {
                "200": {"description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/1.0/openapi.json": {"get": {"summary": "this schema", "responses": _responses(200, {"type": "object"})}},
            "/1.0/instances/{ref}/state": {
                "parameters": [REF],
                "put": {"summary": "start, stop or restart (an operation)",
                        "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/StateChange"})},
                        "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/exec": {
                "parameters": [REF],
                "get": {"summary": "run a command (WebSocket upgrade; see ctd/api/stream.py for framing)",
                        "parameters": [
                            {"name": "cmd", "in": "query", "required": True, "style": "form", "explode": True,
                             "schema": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
                            {"name": "env", "in": "query", "style": "form", "explode": True,
                             "schema": {"type": "array", "items": {"type": "string", "pattern": "^[^=]+=.*$"}}},
                            {"name": "cwd", "in": "query", "schema": {"type": "string"}},
                            {"name": "tty", "in": "query", "schema": {"type": "boolean"}},
                            {"name": "width", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 9999}},
                            {"name": "height", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 9999}},
                        ],
                        "responses": _responses(101, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/console": {
                "parameters": [REF],
                "get": {"summary": "attach to /dev/console (WebSocket upgrade)",
                        "responses": _responses(101, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/templates": {
                "get": {"summary": "recipes and built templates", "responses": _responses(200, {"type": "object"})},
                "post": {"summary": "build a template from its recipe (an operation)",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "additionalProperties": False,
                             "properties": {"name": NAME, "from": {"type": "string"},
                                            "mirror": {"type": "string"}, "import": {"type": "string"}}})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/templates/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": NAME}],
                "delete": {"summary": "delete a built template", "responses": _responses(200, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/operations": {"get": {"summary": "recent operations", "responses": _responses(200, {"type": "object"})}},
            "/1.0/operations/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {"summary": "one operation", "responses": _responses(200, op_resp, 404)},
                "delete": {"summary": "ask a running operation to stop", "responses": _responses(200, op_resp, 404)},
            },
            "/1.0/operations/{id}/wait": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "timeout", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 3600}}],
                "get": {"summary": "wait for an operation to finish", "responses": _responses(200, op_resp, 400, 404)},
            },
            "/1.0/networks": {
                "get": {"summary": "list networks", "responses": _responses(200, {"type": "object"})},
                "post": {"summary": "create a network (a bridge with an address pool)",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["name"], "additionalProperties": False,
                             "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,14}$"},
                                            "subnet": {"type": "string"}, "ipv6": {"type": "string"},
                                            "nat": {"type": "boolean"},
                                            "mtu": {"type": "integer", "minimum": 576, "maximum": 65535}}})},
                         "responses": _responses(201, {"type": "object"}, 400, 409)},
            },
            "/1.0/networks/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {"summary": "one network", "responses": _responses(200, {"type": "object"}, 404)},
                "delete": {"summary": "delete a network (refused while in use)",
                           "responses": _responses(200, {"type": "object"}, 404, 409)},
            },
            "/1.0/storage": {"get": {"summary": "the storage pool: driver, size, used, free",
                                     "responses": _responses(200, {"type": "object"})}},
            "/1.0/instances/{ref}/snapshots": {
                "parameters": [REF],
                "get": {"summary": "list snapshots", "responses": _responses(200, {"type": "object"}, 400, 404)},
                "post": {"summary": "take a snapshot (an operation)",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["name"], "additionalProperties": False,
                             "properties": {"name": NAME}})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/snapshots/{snap}": {
                "parameters": [REF, {"name": "snap", "in": "path", "required": True, "schema": NAME}],
                "delete": {"summary": "delete a snapshot", "responses": _responses(200, {"type": "object"}, 400, 404)},
            },
            "/1.0/instances/{ref}/rollback": {
                "parameters": [REF],
                "post": {"summary": "roll the root back to a snapshot (an operation)",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["snapshot"], "additionalProperties": False,
                             "properties": {"snapshot": NAME, "restart": {"type": "boolean"}}})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/clone": {
                "parameters": [REF],
                "post": {"summary": "a new instance from this one or its snapshot (an operation)",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["name"], "additionalProperties": False,
                             "properties": {"name": NAME, "snapshot": NAME}})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/reinstall": {
                "parameters": [REF],
                "post": {"summary": "a fresh root from the template; id, limits, NICs, keys, passwords stay "
                                    "(an operation); restart: stop a running instance first, start it after",
                         "requestBody": {"required": False, **_json({
                             "type": "object", "additionalProperties": False,
                             "properties": {"template": NAME, "restart": {"type": "boolean"}}})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/backup": {
                "parameters": [REF],
                "post": {"summary": "write a backup file on the host (an operation)",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["file"], "additionalProperties": False,
                             "properties": {"file": {"type": "string"}, "snapshot": NAME,
                                            "driver": {"type": "string", "enum": ["auto", "tar"]}}})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/restore": {
                "post": {"summary": "an instance from a backup file (an operation); the file's settings are "
                                    "checked like a create request; never privileged unless asked here, NIC "
                                    "filters on unless filter is false; limits replace the file's",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["file"], "additionalProperties": False,
                             "properties": {"file": {"type": "string"}, "name": NAME,
                                            "privileged": {"type": "boolean"}, "filter": {"type": "boolean"},
                                            "limits": {"$ref": "#/components/schemas/Limits"}}})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/templates/{name}/export": {
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": NAME}],
                "post": {"summary": "write a template as a rootfs tarball (an operation)",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["file"], "additionalProperties": False,
                             "properties": {"file": {"type": "string"}}})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/hardware": {
                "parameters": [REF],
                "get": {"summary": "a running VM's devices as QEMU reports them",
                        "responses": _responses(200, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/check": {"get": {"summary": "host readiness checks", "responses": _responses(200, {"type": "object"})}},
        },
        "components": {"schemas": {
            "Error": ERROR,
            "Limits": {"type": "object", "additionalProperties": False,
                       "properties": {k: {"oneOf": [{"type": "string"}, {"type": "integer"}], "description": v}
                                      for k, v in LIMITS.items()}},
            "CreateInstance": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {
                    "name": NAME, "template": NAME,
                    "id": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                    "hostname": {"type": "string"}, "privileged": {"type": "boolean"},
                    "io_uring": {"type": "boolean", "description": "allow io_uring (denied by default)"},
                    "type": {"type": "string", "enum": ["container", "vm"]},
                    "vm": {"type": "object", "additionalProperties": False, "properties": {
                        "disk": {"type": "string"}, "iso": {"type": "string"},
                        "profile": {"type": "string", "enum": ["linux", "windows"]},
                        "drivers_iso": {"type": "string"}, "compat": {"type": "boolean"}}},
                    "limits": {"$ref": "#/components/schemas/Limits"},
                    "nameservers": {"type": "array", "items": {"type": "string"}},
                    "userpasswd": {"type": "string", "description": "USER:PASSWORD, hashed into the guest"},
                    "ssh_keys": {"type": "array", "items": {"type": "string"}},
                    "timezone": {"type": "string"},
                    **ADMIN,
                    "nics": {"type": "array", "maxItems": 8, "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"network": {"type": "string"},
                                       "mode": {"type": "string", "enum": ["bridged", "routed"]},
                                       "addresses": {"type": "array", "items": {"type": "string"}},
                                       "filter": {"type": "boolean"}, "rate": {"type": "string"}}}},
                    **BOOT,
                }},
            "StateChange": {
                "type": "object", "required": ["action"], "additionalProperties": False,
                "properties": {"action": {"type": "string", "enum": ["start", "stop", "restart", "suspend", "resume"]},
                               "paused": {"type": "boolean", "description": "start a VM with its CPUs stopped"},
                               "timeout": {"type": "number", "minimum": 0, "maximum": 3600},
                               "force": {"type": "boolean", "description": "stop: kill at once"}}},
            "Instance": {"type": "object", "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"}, "type": {"type": "string"},
                "state": {"type": "string"}, "pid": {"type": "integer", "nullable": True},
                "template": {"type": "string"}, "hostname": {"type": "string"},
                "privileged": {"type": "boolean"}, "limits": {"type": "object"},
                **{k: v for k, v in ADMIN.items() if k != "reason"},
                "disabled_reason": {"type": "string", "nullable": True},
                "last_exit": {"type": "object", "nullable": True, "description":
                              "how its last run ended: at, kind (exited, signaled, oom, reboot, poweroff, "
                              "stopped, killed, unknown), text, code, signal, oom_kills"}, **BOOT}},
            "Operation": {"type": "object", "properties": {
                "id": {"type": "string"}, "kind": {"type": "string"}, "target": {"type": "string"},
                "status": {"type": "string", "enum": ["running", "success", "failure"]},
                "error": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True}}},
        }},
    }
