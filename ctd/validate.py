"""Checks of names and fields that come from clients; every error says what to do."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from ctd.errors import InvalidRequest

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_LABEL = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
MAX_INSTANCE_ID = 2**31 - 1


def instance_name(value: Any, what: str = "instance name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value.isdigit():
        raise InvalidRequest(
            f"invalid {what} {value!r}: use 1-63 lowercase letters, digits and '-', "
            "not starting with '-' and not all digits")
    return value


def hostname(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 253 or \
            not all(_LABEL.fullmatch(label) for label in value.split(".")):
        raise InvalidRequest(
            f"invalid hostname {value!r}: use dot-separated labels of letters, digits and '-' "
            "(each 1-63 characters, not starting or ending with '-')")
    return value


def instance_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INSTANCE_ID:
        raise InvalidRequest(f"invalid id {value!r}: use a whole number from 1 to {MAX_INSTANCE_ID}")
    return value


def instance_ref(value: str) -> str:
    """A name or a numeric id, as accepted in URLs and by ctctl."""
    if value.isascii() and value.isdigit():
        return value
    return instance_name(value, "instance name or id")


def body_fields(body: Any, allowed: AbstractSet[str], required: AbstractSet[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(body))
    if missing:
        raise InvalidRequest(f"missing field(s): {', '.join(missing)}")
    return body


def boolean(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false, got {value!r}")
    return value


def number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"{key} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def string_list(body: dict[str, Any], key: str, required: bool = False) -> list[str]:
    value = body.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or (required and not value):
        raise InvalidRequest(f"{key} must be a non-empty list of strings" if required
                             else f"{key} must be a list of strings")
    if any("\0" in v for v in value):
        raise InvalidRequest(f"{key} must not contain NUL characters")
    return value


def ip_and_port(setting: str, text: object, example: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """A listen address setting: an IP literal (IPv6 in brackets) and a port, e.g. example."""
    what = f"{setting} {text!r}"
    if not isinstance(text, str):
        raise InvalidRequest(f"{what} must be a string such as \"{example}\"")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InvalidRequest(f"{what} must be ADDRESS:PORT, e.g. \"{example}\"")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidRequest(f"{what}: {host!r} is not an IP address (IPv6 goes in brackets: "
                             f"\"[::1]:{example.rpartition(':')[2]}\")") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidRequest(f"{what}: the port must be a number from 1 to 65535")
    return address, int(port_text)
