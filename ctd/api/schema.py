"""The OpenAPI description of the REST API, served at /1.0/openapi.json."""

from __future__ import annotations

from typing import Any

from ctd import __version__
from ctd.api.firewall_schema import schema_paths as firewall_paths
from ctd.api.nics_schema import NIC_SCHEMA
from ctd.api.nics_schema import schema_paths as nic_paths
from ctd.api.openapi import json_content as _json
from ctd.api.openapi import responses as _responses
from ctd.cluster.migrate_schema import schema_paths as migrate_paths
from ctd.cluster.replicate_schema import schema_paths as replicate_paths
from ctd.cluster.schema import schema_paths as cluster_paths
from ctd.cluster.vm_migrate_schema import schema_paths as vm_migrate_paths
from ctd.limits import LIMITS
from ctd.project.schema import schema_paths as project_paths
from ctd.remote.api import schema_paths as remote_paths
from ctd.remote.policy import INSTANCE_ACTIONS
from ctd.remote.trust_api import schema_paths as trust_paths
from ctd.web.serve import schema_paths as web_paths

BOOT = {"onboot": {"type": "boolean", "description": "start after a host boot (also \"yes\"/\"no\")"},
        "boot_order": {"type": "integer", "minimum": 0, "maximum": 10000,
                       "description": "lower starts first, stops last; default 10000 (after every ordered one)"},
        "boot_delay": {"type": "integer", "minimum": 0, "maximum": 3600,
                       "description": "seconds the next boot-order group waits after this one started"},
        "stop_timeout": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 3600},
                                   {"type": "string", "enum": ["default"]}],
                         "description": "seconds a stop waits before it kills (stop, restart, shutdown-all); "
                                        "\"default\": the server's stop_timeout"},
        # scheduled backups (docs/storage.md#scheduled-backups)
        "backup_schedule": {"type": "string", "maxLength": 200, "description":
                            "hourly, daily@HH:MM, weekly@DAY HH:MM or cron's 'M H DOM MON DOW' (host's local "
                            "time); 'none' removes it"},
        "backup_keep": {"type": "integer", "minimum": 1, "maximum": 1000,
                        "description": "backups kept in backup_dir (and the parents they need); default 7"}}
FEATURES = {"features": {"oneOf": [{"type": "array", "items": {"type": "string", "enum": ["tun", "fuse"]}},
                                   {"type": "string"}],
                         "description": "container features: devices beyond the default list (tun, fuse); "
                                        "a list or a comma-separated string; at set, the whole new set ([] for none)"}}
MOUNT_ITEM = {"oneOf": [
    {"type": "string", "description": "SOURCE:TARGET[:ro][,idmap], e.g. /srv/data:/data:ro"},
    {"type": "object", "additionalProperties": False, "required": ["source", "target"],
     "properties": {"source": {"type": "string"}, "target": {"type": "string"},
                    "readonly": {"type": "boolean"}, "idmap": {"type": "boolean"}}}]}
MOUNTS = {"mounts": {"type": "array", "maxItems": 16, "items": MOUNT_ITEM,
                     "description": "host directories or files bound into a container (at set: added)"}}
NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$", "description": "not all digits"}
PROJECT = {"type": "string", "description": "the project it lands in (admins; others: their own)"}
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
            **firewall_paths(),
            **project_paths(),
            **cluster_paths(),
            **migrate_paths(),
            **vm_migrate_paths(),
            **replicate_paths(),
            "/1.0/whoami": {"get": {
                "summary": "the caller's identity (name, kind, role, project) and the instance actions its role allows",
                "responses": _responses(200, {"type": "object", "properties": {
                    "identity": {"type": "object"},
                    "may": {"type": "object", "properties": {a: {"type": "boolean"} for a in INSTANCE_ACTIONS}}}})}},
            **web_paths(),
            **nic_paths(),
            "/1.0/instances": {
                "get": {"summary": "list instances",
                        "parameters": [
                            {"name": "state", "in": "query", "schema": {"type": "string"},
                             "description": "stopped, running, … or disabled (repeatable: any of them)"},
                            {"name": "tag", "in": "query", "schema": {"type": "string"},
                             "description": "KEY=VALUE or KEY (repeatable: all of them)"},
                            {"name": "project", "in": "query", "schema": {"type": "string"},
                             "description": "only this project's (an operator or tenant sees its own anyway)"}],
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
                                             "hostname": {"type": "string"}, **FEATURES, **MOUNTS,
                                             "unmount": {"type": "array", "items": {"type": "string"},
                                                         "description": "targets of host mounts to remove"},
                                             "disk": {"type": "string", "description":
                                                      "a VM's root disk grown to this size, e.g. 40G (never shrunk)"},
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
                                    "body: {\"timeout\": seconds} (default: each instance's stop_timeout)",
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
            "/1.0/events": {
                "get": {"summary": "the node's events, one JSON text frame each (WebSocket upgrade; filtered by "
                                   "the caller's project; docs/api.md, Events)",
                        "parameters": [
                            {"name": "type", "in": "query", "style": "form", "explode": True,
                             "description": "comma-separated: lifecycle, operation, limit, exit, log (default all)",
                             "schema": {"type": "array", "items": {"type": "string"}}},
                            {"name": "instance", "in": "query", "schema": NAME},
                        ],
                        "responses": _responses(101, {"type": "object"}, 400)},
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
                            {"name": "width", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 9999}},
                            {"name": "height", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 9999}},
                        ],
                        "responses": _responses(101, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/console": {
                "parameters": [REF],
                "get": {"summary": "attach to the console: a container's /dev/console, a VM's serial port "
                                   "(WebSocket upgrade)",
                        "responses": _responses(101, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/vnc": {
                "parameters": [REF],
                "get": {"summary": "a running VM's display: its VNC (RFB) stream (WebSocket upgrade)",
                        "responses": _responses(101, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/console/log": {
                "parameters": [REF],
                "get": {"summary": "the console's last 1 MiB as the guest wrote it (running or stopped; "
                                   "empty if it never printed)",
                        "responses": {**_responses(200, {"type": "object"}, 400, 404),
                                      "200": {"description": "the guest's bytes, unfiltered",
                                              "content": {"text/plain": {"schema": {"type": "string"}}}}}},
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
                "delete": {"summary": "delete a built template",
                           "responses": _responses(200, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/operations": {"get": {"summary": "recent operations",
                                        "responses": _responses(200, {"type": "object"})}},
            "/1.0/operations/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {"summary": "one operation", "responses": _responses(200, op_resp, 404)},
                "delete": {"summary": "ask a running operation to stop", "responses": _responses(200, op_resp, 404)},
            },
            "/1.0/operations/{id}/wait": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "timeout", "in": "query",
                                "schema": {"type": "number", "minimum": 0, "maximum": 3600}}],
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
                                            "dhcp": {"type": "boolean", "description": "dnsmasq on the bridge: "
                                                     "DHCP with ctd's addresses, DNS for instance names "
                                                     "(default: on where dnsmasq is installed)"},
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
                "post": {"summary": "write a backup file on the host (an operation); without file: the next "
                                    "backup of the instance's chain into the node's backup_dir (incremental "
                                    "on btrfs), retention applied",
                         "requestBody": {"required": False, **_json({
                             "type": "object", "additionalProperties": False,
                             "properties": {"file": {"type": "string"}, "snapshot": NAME,
                                            "driver": {"type": "string", "enum": ["auto", "tar"]}}})},
                         "responses": _responses(202, op_resp, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/backups": {
                "parameters": [REF],
                "get": {"summary": "the backups in the node's backup_dir, oldest first: id, created, kind "
                                   "(full/incremental), parent (id), file, size, scheduled, present",
                        "responses": _responses(200, {"type": "object"}, 400, 404)},
            },
            "/1.0/restore": {
                "post": {"summary": "an instance from a backup file (an operation); the file's settings are "
                                    "checked like a create request; never privileged unless asked here, NIC "
                                    "filters on unless filter is false; limits replace the file's",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["file"], "additionalProperties": False,
                             "properties": {"file": {"type": "string"}, "name": NAME, "project": PROJECT,
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
            "/1.0/instances/{ref}/disks": {
                "parameters": [REF],
                "post": {"summary": "add a data disk to a VM (hot-plugged into a running pc VM)",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["size"], "additionalProperties": False,
                             "properties": {"size": {"type": "string", "description": "e.g. 20G"},
                                            "name": {"type": "string", "pattern": "^[a-z][a-z0-9]{0,15}$",
                                                     "description": "default: data1, data2 …"}}})},
                         "responses": _responses(201, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/disks/{disk}": {
                "parameters": [REF, {"name": "disk", "in": "path", "required": True, "schema": NAME}],
                "delete": {"summary": "remove a VM's data disk (the guest releases it; its data is gone)",
                           "responses": _responses(200, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/instances/{ref}/media": {
                "parameters": [REF],
                "post": {"summary": "insert an ISO into a VM's removable CD-ROM (live if it runs); boot: boot it",
                         "requestBody": {"required": True, **_json({
                             "type": "object", "required": ["iso"], "additionalProperties": False,
                             "properties": {"iso": {"type": "string", "description": "absolute path of a regular "
                                                    "file on the host, no symlink, outside ctd's state"},
                                            "boot": {"type": "boolean"}}})},
                         "responses": _responses(200, {"type": "object"}, 400, 404, 409)},
                "delete": {"summary": "eject a VM's removable CD-ROM (it boots from its disk again)",
                           "responses": _responses(200, {"type": "object"}, 400, 404, 409)},
            },
            "/1.0/check": {"get": {"summary": "host readiness checks",
                                   "responses": _responses(200, {"type": "object"})}},
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
                    **FEATURES, **MOUNTS,
                    "project": PROJECT,
                    "node": {"type": "string", "description": "in a cluster: the node to make it on, or "
                             "\"auto\" (the default: placement, docs/cluster.md)"},
                    "type": {"type": "string", "enum": ["container", "vm"]},
                    "vm": {"type": "object", "additionalProperties": False, "properties": {
                        "disk": {"type": "string"}, "iso": {"type": "string"},
                        "profile": {"type": "string", "enum": ["linux", "windows"]},
                        "drivers_iso": {"type": "string"}, "compat": {"type": "boolean"},
                        "user_data": {"type": "string", "maxLength": 65536, "description":
                                      "cloud-init user-data (text), merged after ctd's settings"},
                        "vendor_data": {"type": "string", "maxLength": 65536, "description":
                                        "cloud-init vendor-data (text), on the seed as it is"},
                        "firmware": {"type": "string", "enum": ["bios", "uefi"]},
                        "secure_boot": {"type": "boolean"}, "tpm": {"type": "boolean"}}},
                    "limits": {"$ref": "#/components/schemas/Limits"},
                    "nameservers": {"type": "array", "items": {"type": "string"}},
                    "userpasswd": {"type": "string", "description": "USER:PASSWORD, hashed into the guest"},
                    "ssh_keys": {"type": "array", "items": {"type": "string"}},
                    "timezone": {"type": "string"},
                    **ADMIN,
                    "nics": {"type": "array", "maxItems": 8, "items": {"$ref": "#/components/schemas/Nic"}},
                    **BOOT,
                }},
            "Nic": NIC_SCHEMA,
            "StateChange": {
                "type": "object", "required": ["action"], "additionalProperties": False,
                "properties": {"action": {"type": "string", "enum": ["start", "stop", "restart", "suspend", "resume"]},
                               "paused": {"type": "boolean", "description": "start a VM with its CPUs stopped"},
                               "timeout": {"type": "number", "minimum": 0, "maximum": 3600},
                               "force": {"type": "boolean", "description": "stop: kill at once"}}},
            "Instance": {"type": "object", "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"}, "type": {"type": "string"},
                "project": {"type": "string"}, "state": {"type": "string"},
                "pid": {"type": "integer", "nullable": True},
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
                "error": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True},
                "project": {"type": "string", "description": "who may see it: that project and admins"}}},
        }},
    }
