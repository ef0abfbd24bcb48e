"""What every OpenAPI description of routes shares (the parts are merged into /1.0/openapi.json
by ctd/api/schema.py): a JSON body, and a route's answers, one success and the errors it gives.
A description is plain JSON data: `Schema` is a JSON object, its values whatever JSON holds."""

from __future__ import annotations

from collections.abc import Mapping

Schema = dict[str, object]

OBJECT: Schema = {"type": "object"}
ERROR_REF: Schema = {"$ref": "#/components/schemas/Error"}


def json_content(schema: Mapping[str, object]) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


ERROR: Schema = {"description": "error", **json_content(ERROR_REF)}  # an answer with ctd's error body


def responses(ok: int, ok_schema: Mapping[str, object], *errors: int) -> Schema:
    """`ok` with a JSON body of `ok_schema`; each of `errors` with ctd's error body (ctd/api/errors.py)."""
    out: Schema = {str(ok): {"description": "success", **json_content(ok_schema)}}
    for code in errors:
        out[str(code)] = ERROR
    return out
