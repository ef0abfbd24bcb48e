"""What each role may do: one declarative table, checked before any handler runs.

Contract:
- POLICY maps every API route (its path template and method, as in ctd/api/schema.py) to a Rule:
  the least role that may call it, and for routes that take a JSON body the least role for each
  field (and, for some fields, for some values). tests/unit/test_policy.py fails when a route has
  no entry, so a new route cannot be forgotten; at run time a route without an entry, and a body
  field without one, need an admin (default deny).
- check() answers None (allowed) or a Denial naming the role and what it lacks. The middleware
  (ctd/remote/enforce.py) turns a Denial into 403 before the handler runs: before a body is read
  for a route the role may not call at all, and before a WebSocket upgrade (exec, console).
- Roles are ordered tenant < operator < admin (ctd/remote/identity.py). Which project an
  instance belongs to, and 404 for other projects' names, is not decided here.
- A tenant's exec and a tenant's reinstall template also ask the project (ctd/remote/projectrules.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ctd.remote.identity import Identity, Role

ADMIN, OPERATOR, TENANT = Role.ADMIN, Role.OPERATOR, Role.TENANT


@dataclass(frozen=True)
class Field:
    """A body field: the least role that may send it with any value; `values` lets a lower role
    send exactly these values (same JSON type and value: a tenant may send "action": "stop", an
    operator "privileged": false); `sub` are the fields of an object, or of each object in a list
    (a create request's "vm" and "nics")."""

    role: Role
    values: Mapping[Any, Role] = field(default_factory=dict)
    sub: Mapping[str, Field] | None = None


@dataclass(frozen=True)
class Rule:
    role: Role | None            # None: no authentication at all (only redeeming a join token)
    fields: Mapping[str, Field] | None = None   # None: the body is not judged field by field
    what: str = ""               # how a denial names the action ("change an instance's settings")
    project_check: str = ""      # "exec" or "reinstall": the project is asked too (projectrules.py)


@dataclass(frozen=True)
class Denial:
    role: Role
    needs: Role
    lacks: str     # what the role lacks, e.g. "field 'limits'" or "POST /1.0/networks"

    @property
    def message(self) -> str:
        return f"role {self.role.value} may not {self.lacks}: that needs the {self.needs.value} role"


def fields(**spec: Role | Field) -> dict[str, Field]:
    return {name: f if isinstance(f, Field) else Field(f) for name, f in spec.items()}


# ------------------------------------------------------------------ field rules

# What `ctctl set` may change. A tenant: the guest's own settings (root password, ssh keys,
# hostname, timezone, nameservers) and the free-text description; never limits, addresses, rate,
# tags (the panel's), boot order or the administrative flags.
SET_FIELDS = fields(
    userpasswd=TENANT, ssh_keys=TENANT, hostname=TENANT, timezone=TENANT, nameservers=TENANT, description=TENANT,
    limits=OPERATOR, ipadd=OPERATOR, ipdel=OPERATOR, rate=OPERATOR, tags=OPERATOR, protected=OPERATOR,
    onboot=OPERATOR, features=OPERATOR,   # features add devices: the provider's choice, like limits
    mounts=ADMIN, unmount=ADMIN,          # host paths: only the host's admin
    # disabled is the provider's lever (a customer who did not pay): only an admin lifts it. The
    # boot order is host-wide: boot_delay holds back every later group, other projects' too, and a
    # long stop_timeout holds back the host's shutdown.
    disabled=ADMIN, reason=ADMIN, stop=ADMIN, boot_order=ADMIN, boot_delay=ADMIN, stop_timeout=ADMIN,
    # scheduled backups fill the node's backup_dir: the host's disk
    backup_schedule=ADMIN, backup_keep=ADMIN,
    disk=ADMIN,   # a VM's disk grows into the pool: the host's space, as at create
)

NIC_FIELDS = fields(network=OPERATOR, mode=OPERATOR, addresses=OPERATOR, rate=OPERATOR, mtu=OPERATOR, vlan=OPERATOR,
                    filter=Field(ADMIN, {True: OPERATOR}))   # without the filter a guest may spoof addresses
VM_FIELDS = fields(profile=OPERATOR, compat=OPERATOR,
                   # guest content only (size-bounded text on the seed, run inside the guest)
                   user_data=OPERATOR, vendor_data=OPERATOR,
                   firmware=OPERATOR, secure_boot=OPERATOR, tpm=OPERATOR,   # devices of the VM
                   disk=ADMIN, iso=ADMIN, drivers_iso=ADMIN)  # files on the host

CREATE_FIELDS = fields(
    # id: an operator takes the next free one; naming one would probe other projects' ids.
    # project: an admin's choice; everyone else creates in its own project
    name=OPERATOR, template=OPERATOR, id=ADMIN, project=ADMIN, hostname=OPERATOR, type=OPERATOR, limits=OPERATOR,
    nameservers=OPERATOR, userpasswd=OPERATOR, ssh_keys=OPERATOR, timezone=OPERATOR, description=OPERATOR,
    tags=OPERATOR, protected=OPERATOR, onboot=OPERATOR,
    privileged=Field(ADMIN, {False: OPERATOR}),   # root on the host
    io_uring=Field(ADMIN, {False: OPERATOR}),     # host kernel attack surface
    features=OPERATOR, mounts=ADMIN,              # mounts name host paths
    disabled=Field(ADMIN, {False: OPERATOR}), reason=ADMIN, boot_order=ADMIN, boot_delay=ADMIN, stop_timeout=ADMIN,
    backup_schedule=ADMIN, backup_keep=ADMIN,
    nics=Field(OPERATOR, sub=NIC_FIELDS), vm=Field(OPERATOR, sub=VM_FIELDS),
)

STATE_FIELDS = fields(
    # suspend/resume stay with the operator: a provider may freeze a guest, its tenant must not thaw it
    action=Field(OPERATOR, {"start": TENANT, "stop": TENANT, "restart": TENANT}),
    timeout=TENANT, force=TENANT, paused=Field(OPERATOR, {False: TENANT}),
)

# ------------------------------------------------------------------ the table

INST = "/1.0/instances/{ref}"

POLICY: dict[tuple[str, str], Rule] = {
    # server
    ("/1.0", "GET"): Rule(TENANT, what="read the server information"),
    ("/1.0/openapi.json", "GET"): Rule(TENANT, what="read the API schema"),
    ("/1.0/whoami", "GET"): Rule(TENANT, what="read its own identity"),
    # the web console's static files: the same for everyone, no data in them (ctd/web/serve.py)
    ("/console/", "GET"): Rule(None, what="load the web console"),
    ("/console/{file}", "GET"): Rule(None, what="load the web console"),
    ("/1.0/check", "GET"): Rule(ADMIN, what="run the host checks"),
    ("/1.0/shutdown", "POST"): Rule(ADMIN, what="stop every instance on the host"),
    ("/1.0/storage", "GET"): Rule(ADMIN, what="read the storage pool"),
    ("/1.0/metrics", "GET"): Rule(OPERATOR, what="read the metrics"),
    ("/1.0/beancounters", "GET"): Rule(ADMIN, what="read every instance's beancounters"),
    # every role may subscribe; each event is filtered by project (ctd/remote/scope.py)
    ("/1.0/events", "GET"): Rule(TENANT, what="watch events"),
    # instances
    ("/1.0/instances", "GET"): Rule(TENANT, what="list instances"),
    ("/1.0/instances", "POST"): Rule(OPERATOR, CREATE_FIELDS, "create an instance"),
    (INST, "GET"): Rule(TENANT, what="read an instance"),
    (INST, "PATCH"): Rule(TENANT, SET_FIELDS, "change an instance's settings"),
    (INST, "DELETE"): Rule(OPERATOR, what="destroy an instance"),
    (INST + "/rename", "POST"): Rule(OPERATOR, fields(name=OPERATOR), "rename an instance"),
    (INST + "/state", "PUT"): Rule(TENANT, STATE_FIELDS, "start or stop an instance"),
    (INST + "/exec", "GET"): Rule(TENANT, what="run commands in an instance", project_check="exec"),
    (INST + "/console", "GET"): Rule(TENANT, what="attach to an instance's console"),
    (INST + "/vnc", "GET"): Rule(TENANT, what="see a VM's display"),
    (INST + "/console/log", "GET"): Rule(TENANT, what="read an instance's console log"),
    (INST + "/beancounters", "GET"): Rule(TENANT, what="read an instance's beancounters"),
    (INST + "/hardware", "GET"): Rule(OPERATOR, what="read a VM's devices"),   # names files on the host
    # the ISO is a file on the host, read by QEMU as root: the host's admin names it
    (INST + "/media", "POST"): Rule(ADMIN, fields(iso=ADMIN, boot=ADMIN), "insert an ISO into a VM"),
    (INST + "/media", "DELETE"): Rule(OPERATOR, what="eject a VM's ISO"),
    # a data disk takes the pool's space, as create's disk does: the host's admin gives it
    (INST + "/disks", "POST"): Rule(ADMIN, fields(size=ADMIN, name=ADMIN), "add a data disk to a VM"),
    (INST + "/disks/{disk}", "DELETE"): Rule(OPERATOR, what="remove a VM's data disk"),
    (INST + "/snapshots", "GET"): Rule(TENANT, what="list snapshots"),
    (INST + "/snapshots", "POST"): Rule(TENANT, fields(name=TENANT), "take a snapshot"),
    (INST + "/snapshots/{snap}", "DELETE"): Rule(TENANT, what="delete a snapshot"),
    (INST + "/rollback", "POST"): Rule(TENANT, fields(snapshot=TENANT, restart=TENANT), "roll back to a snapshot"),
    (INST + "/clone", "POST"): Rule(OPERATOR, fields(name=OPERATOR, snapshot=OPERATOR), "clone an instance"),
    (INST + "/reinstall", "POST"): Rule(TENANT, fields(template=TENANT, restart=TENANT), "reinstall an instance",
                                     project_check="reinstall"),
    # A backup file named by the caller is a file on the host (written by root): an admin's. A
    # backup into the node's backup_dir (no file: a name ctd makes, the project's limits.backups)
    # is self-service, as Proxmox and Incus let customers back up their own guests.
    (INST + "/backup", "POST"): Rule(TENANT, fields(file=ADMIN, snapshot=ADMIN, driver=ADMIN), "back up an instance"),
    ("/1.0/restore", "POST"): Rule(ADMIN, what="restore from a backup file on the host"),
    # the firewall per instance: a tenant manages its own instance's (Incus ACLs, Proxmox's VM
    # firewall); the anti-spoofing rules run before it and have no route
    # NICs after create: the provider's, as at create (a network and addresses are given, not taken)
    (INST + "/nics", "POST"): Rule(OPERATOR, NIC_FIELDS, "add a NIC"),
    (INST + "/nics/{nic}", "DELETE"): Rule(OPERATOR, what="remove a NIC"),
    (INST + "/firewall", "GET"): Rule(TENANT, what="read an instance's firewall"),
    (INST + "/firewall", "PATCH"): Rule(TENANT, fields(enabled=TENANT, policy_in=TENANT, policy_out=TENANT),
                                        "change an instance's firewall"),
    (INST + "/firewall/rules", "POST"): Rule(TENANT, fields(direction=TENANT, proto=TENANT, port=TENANT,
                                                            action=TENANT, comment=TENANT,
                                                            **{"from": TENANT, "to": TENANT}),
                                             "add a firewall rule"),
    (INST + "/firewall/rules/{id}", "DELETE"): Rule(TENANT, what="delete a firewall rule"),
    (INST + "/backups", "GET"): Rule(TENANT, what="list an instance's backups"),   # file names only below admin
    # projects: an operator or tenant lists and reads its own (others' are 404), an admin the rest
    ("/1.0/projects", "GET"): Rule(TENANT, what="list projects"),
    ("/1.0/projects", "POST"): Rule(ADMIN, what="create a project"),
    ("/1.0/projects/{name}", "GET"): Rule(TENANT, what="read a project"),
    ("/1.0/projects/{name}", "PATCH"): Rule(ADMIN, what="change a project's limits"),
    ("/1.0/projects/{name}", "DELETE"): Rule(ADMIN, what="delete a project"),
    # operations (whose operations a caller sees is the projects' scoping: ctd/api/scoping.py)
    ("/1.0/operations", "GET"): Rule(TENANT, what="list operations"),
    ("/1.0/operations/{id}", "GET"): Rule(TENANT, what="read an operation"),
    ("/1.0/operations/{id}/wait", "GET"): Rule(TENANT, what="wait for an operation"),
    ("/1.0/operations/{id}", "DELETE"): Rule(OPERATOR, what="cancel an operation"),
    # templates: the host's; a tenant lists them to pick one for a reinstall
    ("/1.0/templates", "GET"): Rule(TENANT, what="list templates"),
    ("/1.0/templates", "POST"): Rule(ADMIN, what="build or import a template"),
    ("/1.0/templates/{name}", "DELETE"): Rule(ADMIN, what="delete a template"),
    ("/1.0/templates/{name}/export", "POST"): Rule(ADMIN, what="export a template to a file on the host"),
    # networks: host bridges, subnets and NAT (which switches the host's forwarding)
    ("/1.0/networks", "GET"): Rule(OPERATOR, what="list networks"),
    ("/1.0/networks/{name}", "GET"): Rule(OPERATOR, what="read a network"),
    ("/1.0/networks", "POST"): Rule(ADMIN, what="create a network"),
    ("/1.0/networks/{name}", "DELETE"): Rule(ADMIN, what="delete a network"),
    # port forwards: a host port is the host's, whoever's instance it leads to
    ("/1.0/networks/{name}/forwards", "GET"): Rule(OPERATOR, what="list port forwards"),
    ("/1.0/networks/{name}/forwards", "POST"): Rule(ADMIN, what="forward a host port"),
    ("/1.0/networks/{name}/forwards/{id}", "DELETE"): Rule(ADMIN, what="delete a port forward"),
    # access itself
    ("/1.0/tokens", "GET"): Rule(ADMIN, what="list API tokens"),
    ("/1.0/tokens", "POST"): Rule(ADMIN, what="create API tokens"),
    ("/1.0/tokens/{name}", "DELETE"): Rule(ADMIN, what="revoke API tokens"),
    ("/1.0/audit", "GET"): Rule(ADMIN, what="read the audit log"),
    ("/1.0/trust", "GET"): Rule(ADMIN, what="list trusted certificates"),
    ("/1.0/trust", "POST"): Rule(ADMIN, what="trust a certificate"),
    ("/1.0/trust/{name}", "DELETE"): Rule(ADMIN, what="remove a trusted certificate"),
    ("/1.0/trust/tokens", "POST"): Rule(ADMIN, what="make join tokens"),
    ("/1.0/trust/tokens/{name}", "DELETE"): Rule(ADMIN, what="revoke join tokens"),
    ("/1.0/trust/join", "POST"): Rule(None, what="redeem a join token"),   # its secret is the authentication
    # the cluster (docs/cluster.md): the provider's, never a tenant's
    ("/1.0/cluster", "GET"): Rule(ADMIN, what="see the cluster"),
    ("/1.0/cluster/init", "POST"): Rule(ADMIN, what="make a cluster"),
    ("/1.0/cluster/nodes", "GET"): Rule(ADMIN, what="list the cluster's nodes"),
    ("/1.0/cluster/nodes", "POST"): Rule(ADMIN, what="make cluster join tokens"),
    ("/1.0/cluster/join", "POST"): Rule(ADMIN, what="join a cluster"),
    ("/1.0/cluster/nodes/{name}", "DELETE"): Rule(ADMIN, what="remove cluster nodes"),
    ("/1.0/cluster/nodes/{name}/evacuate", "POST"): Rule(ADMIN, what="evacuate cluster nodes"),
    ("/1.0/cluster/nodes/{name}/restore", "POST"): Rule(ADMIN, what="restore evacuated cluster nodes"),
    (INST + "/migrate", "POST"): Rule(ADMIN, what="migrate instances between nodes"),
    # a migration's receiving side: admin here, and only a member node's certificate (migrate_receive.py)
    ("/1.0/cluster/migrations", "POST"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/migrations/{id}/stream", "PUT"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/migrations/{id}/finish", "POST"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/migrations/{id}/done", "POST"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/migrations/{id}", "DELETE"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/vm-migrations", "POST"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/vm-migrations/{id}/file", "PUT"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/vm-migrations/{id}/finish", "POST"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/vm-migrations/{id}/done", "POST"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/vm-migrations/{id}/resume", "POST"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/vm-migrations/{id}/tunnel", "GET"): Rule(ADMIN, what="send migrations"),
    ("/1.0/cluster/vm-migrations/{id}", "DELETE"): Rule(ADMIN, what="send migrations"),
    # replication (replicate.py): an admin's setting; the receiving side takes the owner node's certificate only
    (INST + "/replication", "PUT"): Rule(ADMIN, what="replicate instances"),
    (INST + "/replication/sync", "POST"): Rule(ADMIN, what="replicate instances"),
    ("/1.0/cluster/replicas", "GET"): Rule(ADMIN, what="list replicas"),
    ("/1.0/cluster/replicas/{name}", "GET"): Rule(ADMIN, what="send replicas"),
    ("/1.0/cluster/replicas/{name}", "POST"): Rule(ADMIN, what="send replicas"),
    ("/1.0/cluster/replicas/{name}/stream", "PUT"): Rule(ADMIN, what="send replicas"),
}

DEFAULT = Rule(ADMIN)   # a route missing above: admins only

# What GET /1.0/whoami reports a caller may do to an instance (ctd/remote/whoami.py): each
# action's route, method and body, judged by the table above.
INSTANCE_ACTIONS: dict[str, tuple[str, str, dict[str, object] | None]] = {
    "start": (INST + "/state", "PUT", {"action": "start"}),
    "stop": (INST + "/state", "PUT", {"action": "stop"}),
    "restart": (INST + "/state", "PUT", {"action": "restart"}),
    "console": (INST + "/console", "GET", None),
    "exec": (INST + "/exec", "GET", None),
    "display": (INST + "/vnc", "GET", None),
}


def rule_for(path: str, method: str) -> Rule:
    """The rule of a route (its path template, e.g. /1.0/instances/{ref}); HEAD is GET."""
    return POLICY.get((path, "GET" if method == "HEAD" else method), DEFAULT)


def check_route(role: Role, rule: Rule, method: str, path: str) -> Denial | None:
    needs = rule.role or TENANT
    if role.at_least(needs):
        return None
    return Denial(role, needs, rule.what or f"{method} {path}")


def _needed(spec: Field, value: Any) -> Role:
    for allowed, role in spec.values.items():
        if type(allowed) is type(value) and allowed == value:   # true is not 1, "yes" is not true
            return role
    return spec.role


def check_body(role: Role, specs: Mapping[str, Field], body: Any, where: str = "") -> Denial | None:
    """The first field (or value) of `body` the role may not send; None when all are allowed.
    Bodies that are not objects are left to the handler (its 400 names the shape it wants)."""
    if not isinstance(body, dict):
        return None
    for name in sorted(body, key=str):
        value = body[name]
        label = f"{where}{name}"
        spec = specs.get(name)
        if spec is None:
            if not role.at_least(ADMIN):
                return Denial(role, ADMIN, f"send field '{label}'")
            continue
        needs = _needed(spec, value)
        if not role.at_least(needs):
            if any(role.at_least(r) for r in spec.values.values()):
                shown = json.dumps(value)[:60] if _scalar(value) else "this value"
                return Denial(role, needs, f"set '{label}' to {shown}")
            return Denial(role, needs, f"set '{label}'")
        if spec.sub is not None:
            items = value if isinstance(value, list) else [value]
            for n, item in enumerate(items):
                inner = f"{label}[{n}]." if isinstance(value, list) else f"{label}."
                denied = check_body(role, spec.sub, item, inner)
                if denied is not None:
                    return denied
    return None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def allowed_fields(role: Role, specs: Mapping[str, Field]) -> list[str]:
    """The fields a role may send (for the message that lists them)."""
    return sorted(name for name, spec in specs.items() if role.at_least(spec.role))


def visible_info(who: Identity | None, info: Mapping[str, Any]) -> Mapping[str, Any]:
    """GET /1.0: all of it for an admin; below that the version and the HTTPS listener, nothing
    about the host's paths, drivers, recovery or boot sequence (which name other projects'
    instances)."""
    if who is None or who.role is Role.ADMIN:
        return info
    return {k: info[k] for k in ("version", "api", "https") if k in info}
