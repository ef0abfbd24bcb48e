"""Presenting results: a table (one line per check), JSON, and the exit code."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .model import CheckResult, Status


def exit_code(results: Iterable[CheckResult]) -> int:
    """1 when a required item is MISSING, else 0."""
    return int(any(r.required and r.status is Status.MISSING for r in results))


def summary(results: Sequence[CheckResult]) -> dict[str, int]:
    return {s.value.lower(): sum(r.status is s for r in results) for s in Status}


def to_dict(results: Sequence[CheckResult]) -> dict[str, Any]:
    """The shape GET /1.0/check answers with: {"results": [...], "summary": {...}}."""
    return {"results": [r.to_dict() for r in results], "summary": summary(results),
            "exit_code": exit_code(results)}


def to_json(results: Sequence[CheckResult], **extra: Any) -> str:
    return json.dumps({**to_dict(results), **extra}, indent=2)


def render_table(results: Sequence[CheckResult]) -> str:
    """One line per check: STATUS NAME DETAIL, and for anything not OK `-> fix: ...`."""
    width = min(max((len(r.name) for r in results), default=10), 34)
    lines, category = [], None
    for r in results:
        if r.category != category:
            category = r.category
            lines.append(f"[{category}]")
        line = f"  {r.status.value:<7} {r.name:<{width}}  {r.detail}"
        if r.status is not Status.OK and r.fix:
            line += f"  -> fix: {r.fix}"
        lines.append(line)
    s = summary(results)
    verdict = ("required items missing: ctd cannot run here" if exit_code(results)
               else "ready" + (" (with warnings)" if s["warn"] else ""))
    lines.append(f"{s['ok']} OK, {s['warn']} WARN, {s['missing']} MISSING: {verdict}")
    return "\n".join(lines)
