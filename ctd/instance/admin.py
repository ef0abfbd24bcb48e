"""Administrative flags of an instance (OpenVZ's DISABLED, Proxmox's protection, description and
tags) and rename.

Contract:
- check_change validates the admin part of a create or set body on its own (400 naming the field
  and the bound); check_for checks it against the instance (409: disabling a running instance
  without stop); apply merges it into the record (the caller stores it).
- refuse_start (a disabled instance: 409 with the reason and how to enable it) and
  refuse_protected (destroy, reinstall, rollback: 409 naming the flag and how to clear it) are
  what other code calls; autostart checks `rec.disabled` (or calls refuse_start).
- ListFilter: `GET /1.0/instances?state=running&tag=k=v&tag=k2` (every condition must hold).
- rename: a stopped instance gets a new name. Order (crash-safe): the row takes the new name and
  a `renaming` note naming the old one in one write, then the storage directory is renamed
  (snapshots are inside it), then the note goes. finish_renames (recovery, before leftover
  directories are swept) completes a rename a crash cut. NIC host names derive from the id and a
  stopped instance has no cgroups, so nothing else follows a name. The hostname stays (OpenVZ's
  `vzctl set --name` practice); the answer says so when it equalled the old name.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ctd import faults, validate
from ctd.errors import Conflict, InvalidRequest
from ctd.instance.context import InstanceContext
from ctd.state import InstanceRecord, PowerState

ADMIN_FIELDS = frozenset({"disabled", "reason", "protected", "description", "tags", "stop"})
MAX_DESCRIPTION = 4096
MAX_REASON = 256
MAX_TAGS = 64
MAX_TAG_VALUE = 256
TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _text(value: Any, what: str, limit: int, multiline: bool) -> str:
    """A bounded, printable string (newlines and tabs only where multiline)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string")
    if len(value) > limit:
        raise InvalidRequest(f"{what} is {len(value)} characters long; at most {limit} are allowed")
    allowed = "\n\t" if multiline else ""
    bad = next((c for c in value if not c.isprintable() and c not in allowed), None)
    if bad is not None:
        raise InvalidRequest(f"{what} contains the control or unprintable character U+{ord(bad):04X}; "
                             f"use printable text{' (newlines allowed)' if multiline else ' on one line'}")
    return value


def tag_key(value: Any) -> str:
    if not isinstance(value, str) or not TAG_KEY.fullmatch(value):
        raise InvalidRequest(f"invalid tag key {str(value)[:80]!r}: use 1-63 letters, digits, '_', '.' and '-', "
                             "starting with a letter or digit")
    return value


def tag_value(value: Any, key: str) -> str:
    return _text(value, f"the value of tag {key!r}", MAX_TAG_VALUE, multiline=False)


@dataclass(frozen=True)
class AdminChange:
    """The admin part of a create or set, checked on its own. None: not given."""

    disabled: bool | None = None
    reason: str | None = None
    protected: bool | None = None
    description: str | None = None
    tags: dict[str, str | None] = field(default_factory=dict)   # None: remove that tag
    stop: bool = False                  # disabling a running instance stops it first

    @property
    def empty(self) -> bool:
        return (self.disabled is None and self.reason is None and self.protected is None
                and self.description is None and not self.tags)


def check_change(body: Mapping[str, Any]) -> AdminChange:
    """The admin fields of a body (others are ignored here)."""
    def flag(name: str) -> bool | None:
        return validate.boolean(body, name) if body.get(name) is not None else None

    disabled, protected = flag("disabled"), flag("protected")
    stop = validate.boolean(body, "stop") if body.get("stop") is not None else False
    reason = _text(body["reason"], "reason", MAX_REASON, False) if body.get("reason") is not None else None
    if reason is not None and disabled is False:
        raise InvalidRequest("a reason goes with disabled=true (why the instance is disabled)")
    if stop and disabled is not True:
        raise InvalidRequest("stop goes with disabled=true (stop a running instance and disable it)")
    description = (_text(body["description"], "description", MAX_DESCRIPTION, True)
                   if body.get("description") is not None else None)
    tags: dict[str, str | None] = {}
    raw = body.get("tags")
    if raw is not None:
        if not isinstance(raw, dict):
            raise InvalidRequest('tags must be an object of KEY: VALUE (null or "" removes KEY)')
        if len(raw) > MAX_TAGS:
            raise InvalidRequest(f"{len(raw)} tags given; an instance has at most {MAX_TAGS}")
        for key, value in raw.items():
            key = tag_key(key)
            tags[key] = None if value in (None, "") else tag_value(value, key)
    return AdminChange(disabled, reason, protected, description, tags, stop)


def check_for_new(change: AdminChange) -> None:
    """A create: nothing runs yet, so stop means nothing."""
    if change.stop:
        raise InvalidRequest("stop is for disabling a running instance (ctctl set); a new one is not running")
    if change.reason is not None and not change.disabled:
        raise InvalidRequest("a reason goes with disabled=true (why the instance is disabled)")
    if any(value is None for value in change.tags.values()):
        raise InvalidRequest("a new instance has no tags to remove; give KEY=VALUE")


def check_for(rec: InstanceRecord, change: AdminChange, running: bool) -> None:
    """What needs the instance: a running one is disabled only with stop; the tag count."""
    if change.disabled and running and not change.stop:
        raise Conflict(f"{rec.name} is running; stop it first, or disable it with --stop "
                       "(stopped and disabled in one request)")
    if change.reason is not None and change.disabled is None and not rec.disabled:
        raise InvalidRequest(f"{rec.name} is not disabled: a reason goes with --disabled yes")
    merged = merged_tags(rec.tags, change.tags)
    if len(merged) > MAX_TAGS:
        raise InvalidRequest(f"{rec.name} would have {len(merged)} tags; at most {MAX_TAGS} "
                             "(remove some with --untag KEY)")


def merged_tags(old: dict[str, str], change: dict[str, str | None]) -> dict[str, str]:
    tags = dict(old)
    for key, value in change.items():
        if value is None:
            tags.pop(key, None)
        else:
            tags[key] = value
    return dict(sorted(tags.items()))


def apply(rec: InstanceRecord, change: AdminChange) -> None:
    """Merge a checked change into the record (the caller stores it)."""
    if change.disabled is not None:
        rec.disabled = change.disabled
        if not change.disabled:
            rec.disabled_reason = ""
    if change.reason is not None:
        rec.disabled_reason = change.reason
    if change.protected is not None:
        rec.protected = change.protected
    if change.description is not None:
        rec.description = change.description
    rec.tags = merged_tags(rec.tags, change.tags)


def view_fields(rec: InstanceRecord) -> dict[str, Any]:
    return {"disabled": rec.disabled, "disabled_reason": rec.disabled_reason if rec.disabled else None,
            "protected": rec.protected, "description": rec.description, "tags": dict(rec.tags)}


def refuse_start(rec: InstanceRecord) -> None:
    if rec.disabled:
        why = f" ({rec.disabled_reason})" if rec.disabled_reason else ""
        raise Conflict(f"{rec.name} is disabled{why}; enable it with 'ctctl set {rec.name} --disabled no'")


def refuse_protected(rec: InstanceRecord, action: str) -> None:
    if rec.protected:
        raise Conflict(f"{rec.name} is protected: {action} is refused; clear the flag with "
                       f"'ctctl set {rec.name} --protected no'")


# ------------------------------------------------------------------ list filters

@dataclass(frozen=True)
class ListFilter:
    states: frozenset[str] = frozenset()
    tags: tuple[tuple[str, str | None], ...] = ()    # (key, value); value None: the key is set

    def matches(self, rec: InstanceRecord) -> bool:
        if self.states and rec.state.value not in self.states and not ("disabled" in self.states and rec.disabled):
            return False
        return all(key in rec.tags and (value is None or rec.tags[key] == value) for key, value in self.tags)

    def matches_view(self, view: dict[str, Any]) -> bool:
        """The same test on an instance's view (another cluster node's, as it published it)."""
        if self.states and view.get("state") not in self.states and not ("disabled" in self.states
                                                                         and view.get("disabled")):
            return False
        tags = view.get("tags") or {}
        return all(key in tags and (value is None or tags[key] == value) for key, value in self.tags)


def check_filter(states: list[str], tags: list[str]) -> ListFilter:
    known = {s.value for s in PowerState} | {"disabled"}
    if len(states) + len(tags) > MAX_TAGS:
        raise InvalidRequest(f"at most {MAX_TAGS} filters")
    for state in states:
        if state not in known:
            raise InvalidRequest(f"unknown state {state[:40]!r}; use one of {', '.join(sorted(known))}")
    pairs: list[tuple[str, str | None]] = []
    for tag in tags:
        key, sep, value = tag.partition("=")
        pairs.append((tag_key(key), tag_value(value, key) if sep else None))
    return ListFilter(frozenset(states), tuple(pairs))


# ------------------------------------------------------------------ rename

def check_rename(ctx: InstanceContext, rec: InstanceRecord, body: Any, running: bool) -> str:
    body = validate.body_fields(body, {"name"}, {"name"})
    new = validate.instance_name(body["name"], "new name")
    if new == rec.name:
        raise InvalidRequest(f"{rec.name} already has that name")
    if running or rec.state is not PowerState.STOPPED:
        raise Conflict(f"{rec.name} is {rec.state.value}; stop it first ('ctctl stop {rec.name}'), then rename it")
    if ctx.reservations.name_taken(new):
        raise Conflict(f"an instance named {new!r} already exists; choose another name")
    if ctx.storage.instance_path(new).exists():
        raise Conflict(f"{ctx.storage.instance_path(new)} exists (left by something else); choose another name")
    return new


def rename(ctx: InstanceContext, rec: InstanceRecord, new: str) -> list[str]:
    """Rename a stopped instance (checked by check_rename, under its lock). No await inside:
    nothing else in ctd sees the half-done state; a crash is finished by finish_renames."""
    old = rec.name
    rec.name = new
    rec.options = dataclasses.replace(rec.options, renaming=old)
    ctx.db.update_instance(rec)          # one write: the row has the new name and the note
    faults.point("rename.after_db")
    if ctx.storage.instance_path(old).exists():
        os.rename(ctx.storage.instance_path(old), ctx.storage.instance_path(new))
    faults.point("rename.after_storage")
    rec.options = dataclasses.replace(rec.options, renaming=None)
    ctx.db.update_instance(rec)
    notes = []
    if rec.hostname == old:
        notes.append(f"the hostname stays {old!r}; change it with 'ctctl set {new} --hostname {new}'")
    return notes


def finish_renames(ctx: InstanceContext) -> list[str]:
    """After a crash: complete every rename the row says was started (runs before recovery
    sweeps directories no row names)."""
    done = []
    for rec in ctx.db.list_instances():
        old = rec.options.renaming
        if old is None:
            continue
        src, dst = ctx.storage.instance_path(old), ctx.storage.instance_path(rec.name)
        if src.exists() and not dst.exists() and ctx.db.get_instance(old) is None:
            os.rename(src, dst)
        rec.options = dataclasses.replace(rec.options, renaming=None)
        ctx.db.update_instance(rec)
        done.append(f"{old} -> {rec.name}")
    return done
