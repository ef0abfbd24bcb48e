"""Request bodies: JSON parsed within bounds (a client chooses every byte)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ctd.errors import InvalidRequest

MAX_JSON_DEPTH = 32  # ctd's deepest body is 3 levels; deeper is an attack on the parser's stack


def json_depth(value: Any) -> int:
    """How deeply value nests lists and objects (iterative: no recursion to exhaust)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                todo.extend((child, depth + 1) for child in item)
    return deepest


def parse_json(raw: bytes | str) -> Any:
    """A JSON document from a client; InvalidRequest (400) for bad JSON or nesting deeper than
    MAX_JSON_DEPTH (json.loads itself raises RecursionError near Python's stack limit)."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        value = None
    else:
        if json_depth(value) <= MAX_JSON_DEPTH:
            return value
    raise InvalidRequest(f"the request body nests lists/objects more than {MAX_JSON_DEPTH} levels "
                         "deep; no ctd request needs more than a few")


async def json_body(request: web.Request) -> Any:
    """The request's body parsed by parse_json; no body reads as {}. A body already read (the
    role check reads some: ctd/remote/enforce.py) is read again from aiohttp's copy."""
    if not request.body_exists:
        return {}
    return parse_json(await request.read() or b"{}")
