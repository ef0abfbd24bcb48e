"""What a restore makes of a backup's header: the new instance's settings.

A backup file is untrusted input, like a tarball: whoever hands the admin a file chooses every
byte of its header. So nothing in it is copied as it is. Each field is either checked by the
code that checks a create request (names, hostname, limits, NICs, guest options), or ignored
and replaced by what a new instance gets:

- privileged: never from the file; only the admin's own flag at restore (``--privileged``).
- NIC filters: always on unless the admin says ``--no-filter``; MACs and addresses are new.
- options: a whitelist of guest settings; runtime state of the source (``cgroup_fixed``, VM
  state …) and anything unknown is dropped, and the answer's notes say what was.
- limits: through limits.normalise, as for create and set; the admin's limits given at restore
  replace the file's (so a backup of a bigger host's instance can be restored with smaller ones).
- init and stop_signal: checked shapes (an absolute path; a signal name).
- description and tags: checked as at set (admin.check_change); the admin flags disabled and
  protected are never taken from a file (a tenant's file must not lock the admin out, nor
  unprotect anything): a restored instance is neither, whatever the header says.

Unknown fields of the header's meta are ignored and named in the notes. A value of a known
field that does not pass its check refuses the restore (400) with the field named.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ctd import guest, validate
from ctd import limits as limits_mod
from ctd.errors import InvalidRequest, NotFound
from ctd.instance import admin
from ctd.network import ipam, tc
from ctd.network.manager import MAX_NICS, NicRequest
from ctd.state.options import InstanceOptions, Passwd
from ctd.template.recipe import Recipe, check_stop_signal

if TYPE_CHECKING:
    from ctd.instance.context import InstanceContext
    from ctd.storage.backup.format import BackupHeader

KNOWN_META = frozenset({"name", "template", "hostname", "privileged", "limits", "init", "stop_signal",
                        "options", "nics", "description", "tags"})
NETWORK_STYLES = ("none", "ip", "networkd")
MAX_INIT_ARGS = 64
MAX_ARG = 4096


@dataclass
class RestorePlan:
    """The checked settings of the instance a restore makes (containers only)."""

    name: str
    hostname: str
    template: str
    privileged: bool
    limits: dict[str, int]
    init: list[str]
    stop_signal: str
    options: InstanceOptions   # the guest settings alone
    nics: list[NicRequest]
    # a copy beside its source (restored under another name): a new machine-id, no ssh host keys
    new_identity: bool
    notes: list[str] = field(default_factory=list)
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _header_field(label: str, hint: str = "") -> Iterator[None]:
    """Turns a field's InvalidRequest into one that names the backup's header and the field."""
    try:
        yield
    except (InvalidRequest, NotFound) as exc:
        raise InvalidRequest(f"backup header, {label}: {exc.message}" + (f"; {hint}" if hint else "")) from None


def _names(keys: Any) -> str:
    shown = sorted(str(k)[:40] for k in keys)
    return ", ".join(shown[:10]) + (f" and {len(shown) - 10} more" if len(shown) > 10 else "")


def plan_restore(manager: InstanceContext, header: BackupHeader, body: dict[str, Any]) -> RestorePlan:
    """The settings for restoring header's backup as asked by body (a checked restore request:
    name, privileged, filter, limits); InvalidRequest names the field that is wrong."""
    meta = header.get("meta") or {}
    notes: list[str] = []
    source = header["name"]
    if body.get("name") is not None:
        name = validate.instance_name(body["name"])
    else:
        with _header_field("name", "restore it with --name NEW"):
            name = validate.instance_name(source)
    new_identity = name != source
    unknown = set(meta) - KNOWN_META
    if unknown:
        notes.append(f"ignored from the backup's header: {_names(unknown)}")

    template, raw_template = "", meta.get("template")
    if raw_template:
        with _header_field("template"):
            template = validate.instance_name(raw_template, "template name")
    if new_identity or meta.get("hostname") is None:
        hostname = name
    else:
        with _header_field("hostname"):
            hostname = validate.hostname(meta["hostname"])

    privileged = validate.boolean(body, "privileged")
    if meta.get("privileged") is True and not privileged:
        notes.append("the backup is of a privileged container; it is restored unprivileged (its own "
                     "id range); only 'restore --privileged' makes it privileged")

    limits = _limits(manager, meta.get("limits"), body.get("limits"))
    recipe = _recipe(manager, template)
    init, stop_signal = _init(recipe, meta)
    options = _options(meta.get("options"), recipe, notes)
    nics = _nics(manager, meta.get("nics"), validate.boolean(body, "filter", True), notes)
    with _header_field("description or tags"):
        labels = admin.check_change({"description": meta.get("description"), "tags": meta.get("tags")})
    return RestorePlan(name=name, hostname=hostname, template=template, privileged=privileged, limits=limits,
                       init=init, stop_signal=stop_signal, options=options, nics=nics,
                       new_identity=new_identity, notes=notes, description=labels.description or "",
                       tags={k: v for k, v in labels.tags.items() if v is not None})


def _limits(manager: InstanceContext, stored: Any, given: Any) -> dict[str, int]:
    """The file's limits (the state's normalised form, or the request form) checked exactly as
    create checks them; the admin's limits at restore replace the file's one by one."""
    cpus = len(manager.host_cpus)
    override = limits_mod.normalise(given or {}, cpus)
    raw: Any = stored if stored is not None else {}
    with _header_field("limits", "give the limit at restore (e.g. --numproc 100, or 'unlimited') to replace it"):
        if not isinstance(raw, dict):
            raise InvalidRequest("limits must be an object like {\"ram\": \"512M\"}")
        raw = {k: v for k, v in raw.items() if k not in override}
        if "ram_high" in raw:  # the state keeps ram's barrier apart: back to 'barrier:limit'
            high = raw.pop("ram_high")
            if "ram" not in raw and "ram" not in override:
                raise InvalidRequest("ram_high without ram")
            if "ram" in raw:
                raw["ram"] = f"{high}:{raw['ram']}"
        from_file = limits_mod.normalise(raw, cpus)
        merged = limits_mod.merge(from_file, override)
    manager.check_io_device(merged)
    return merged


def _recipe(manager: InstanceContext, template: str) -> Recipe | None:
    """How instances of the file's template run, when this host knows it (for what the file
    leaves out)."""
    if not template:
        return None
    try:
        return manager.templates.recipe_of(template)
    except NotFound:
        return None


def _init(recipe: Recipe | None, meta: Mapping[str, object]) -> tuple[list[str], str]:
    """The init command and its stop signal: the file's if well-formed, else the template's
    recipe's (when this host knows the template), else /sbin/init and SIGTERM."""
    default_init = list(recipe.init) if recipe else ["/sbin/init"]
    default_signal = recipe.stop_signal if recipe else "SIGTERM"
    init = meta.get("init")
    if init is None:
        init = default_init
    else:
        with _header_field("init"):
            if (not isinstance(init, list) or not 1 <= len(init) <= MAX_INIT_ARGS
                    or not all(isinstance(a, str) and 0 < len(a) <= MAX_ARG and "\0" not in a for a in init)
                    or not init[0].startswith("/") or ".." in init[0].split("/")):
                raise InvalidRequest(f"init must be a command line of at most {MAX_INIT_ARGS} non-empty strings "
                                     "whose first is an absolute path without '..', like [\"/sbin/init\"]")
    stop_signal = meta.get("stop_signal")
    if stop_signal is None:
        stop_signal = default_signal
    else:
        with _header_field("stop_signal"):
            stop_signal = check_stop_signal(stop_signal)
    return list(init), stop_signal


def _options(raw: Any, recipe: Recipe | None, notes: list[str]) -> InstanceOptions:
    """The guest settings a new instance may have; the rest (runtime state) is dropped. What
    the file leaves out comes from the template's recipe, as at create."""
    if raw is None:
        raw = {}
    with _header_field("options"):
        if not isinstance(raw, dict):
            raise InvalidRequest("options must be an object")
        network_style = raw.get("network_style", recipe.network_style if recipe else "none")
        if network_style not in NETWORK_STYLES:
            raise InvalidRequest(f"invalid network_style {network_style!r}: use {', '.join(NETWORK_STYLES)}")
        passwd = None
        if raw.get("passwd") is not None:
            fields = validate.body_fields(raw["passwd"], {"user", "hash"}, {"user", "hash"})
            passwd = Passwd(guest.check_user(fields["user"]), guest.check_password_hash(fields["hash"]))
        out = InstanceOptions(
            systemd=validate.boolean(raw, "systemd", recipe.systemd if recipe else False),
            network_style=network_style,
            ssh_keys=tuple(guest.check_ssh_key(k) for k in validate.string_list(raw, "ssh_keys")),
            timezone=guest.check_timezone(raw["timezone"]) if raw.get("timezone") is not None else None,
            nameservers=tuple(str(ipam.parse_address(a)) for a in validate.string_list(raw, "nameservers")),
            passwd=passwd)
    dropped = set(raw) - set(out.guest_stored())
    if dropped:
        notes.append(f"not restored from the backup's options (runtime state or unknown): {_names(dropped)}")
    return out


def _nics(manager: InstanceContext, raw: Any, filtered: bool, notes: list[str]) -> list[NicRequest]:
    """NICs on the same networks, in the same modes, rates, MTUs and VLANs, with new MACs and addresses;
    anti-spoofing on unless the admin turned it off. NICs on networks this host lacks go."""
    if raw is None:
        return []
    wanted: list[dict[str, Any]] = []
    with _header_field("nics"):
        if not isinstance(raw, list) or len(raw) > MAX_NICS:
            raise InvalidRequest(f"nics must be a list of at most {MAX_NICS} objects")
        for index, nic in enumerate(raw, 1):
            if not isinstance(nic, dict):
                raise InvalidRequest(f"NIC {index} is not an object")
            network, mode, rate = nic.get("network"), nic.get("mode", "bridged"), nic.get("rate")
            if mode not in ("bridged", "routed"):
                raise InvalidRequest(f"NIC {index}: invalid mode {mode!r}: use bridged or routed")
            if network is not None and not isinstance(network, str):
                raise InvalidRequest(f"NIC {index}: network must be a network name")
            if rate is not None:  # the state keeps bits per second; a request says '10mbit'
                if isinstance(rate, bool) or not isinstance(rate, (int, str)):
                    raise InvalidRequest(f"NIC {index}: invalid rate {rate!r}")
                rate = tc.parse_rate(f"{rate}bit" if isinstance(rate, int) else rate)
            if network is None or manager.db.get_network(network) is None:
                notes.append(f"NIC {index} not restored: network {network!r} does not exist here "
                             "(create it and restore again to have it)" if network else
                             f"NIC {index} not restored: it is on no network (routed with fixed addresses)")
                continue
            wanted.append({"network": network, "mode": mode, "filter": filtered,
                           **({"rate": f"{rate}bit"} if rate is not None else {}),
                           **{k: nic[k] for k in ("mtu", "vlan") if nic.get(k) is not None}})  # checked below
        nics = manager.network.check_nics(wanted)
    return nics


__all__ = ["RestorePlan", "plan_restore"]
