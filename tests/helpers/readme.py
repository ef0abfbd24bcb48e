"""The command blocks of README.md and docs/*.md as data: what tests/host/test_readme.py runs.

A command block is a fenced block with `$ ` lines. Each `$ ` line (joined with its `\\`
continuations, its trailing `# comment` dropped) is one command; the lines under it up to the
next `$ ` are the output the page shows for it. A block may be preceded by an HTML comment
that the rendered page hides, saying what CI must know:

    <!-- readme-test
    setup: ctctl template export busybox debian-12-x86_64.tar.gz
    skip "ctctl enter web": interactive (a pty)
    fails "ctctl destroy web": refused while it runs, as the line says
    retry 60 "ssh root@": sshd comes up with systemd
    -->

setup lines run (in bash) before the block; `skip` and `fails` need a reason; each quoted
prefix must match a command of the block, so a marker cannot outlive its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

MARKER_OPEN = "<!-- readme-test"
_DIRECTIVE = re.compile(r'^(skip|fails|retry (\d+)) "([^"]+)"(?::\s*(.*))?$')
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


class Mode(Enum):
    RUN = "run"          # must exit 0
    SKIP = "skip"        # not run in CI (interactive, needs what CI lacks)
    FAILS = "fails"      # must exit non-zero (the page shows a refusal)


@dataclass
class Command:
    line: int            # 1-based line of the `$ ` in its page
    text: str            # the command, continuations joined, comment dropped
    shown: list[str] = field(default_factory=list)
    mode: Mode = Mode.RUN
    reason: str = ""
    retry: int = 0       # seconds to keep retrying until it succeeds


@dataclass
class Block:
    section: str
    line: int
    commands: list[Command]
    setup: list[str] = field(default_factory=list)
    page: str = ""           # the file it is in (README.md, docs/vms.md), as errors name it


class ReadmeError(ValueError):
    pass


def _strip_comment(text: str) -> str:
    """Drop a trailing `# comment` that is outside quotes ($(...) and '...' keep theirs)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


def _commands(lines: list[tuple[int, str]], page: str) -> list[Command]:
    out: list[Command] = []
    pending: Command | None = None
    for number, raw in lines:
        if pending is not None:          # a continuation of the previous `$ ` line
            part = _strip_comment(raw.strip())
            cont = part.endswith("\\")
            pending.text += " " + part.rstrip("\\").strip()
            if not cont:
                out.append(pending)
                pending = None
            continue
        if raw.startswith("$ "):
            text = _strip_comment(raw[2:].strip())
            cmd = Command(number, text.rstrip("\\").strip())
            if text.endswith("\\"):
                pending = cmd
            else:
                out.append(cmd)
        elif out and raw.strip() and not raw.lstrip().startswith("#"):
            out[-1].shown.append(raw)
    if pending is not None:
        raise ReadmeError(f"{page}:{pending.line}: a `\\` continuation runs off the end of its block")
    return out


def _apply(block: Block, directives: list[tuple[int, str]]) -> None:
    page = block.page
    for number, text in directives:
        if text.startswith("setup:"):
            block.setup.append(text[len("setup:"):].strip())
            continue
        m = _DIRECTIVE.match(text)
        if m is None:
            raise ReadmeError(f"{page}:{number}: unknown readme-test directive {text!r}")
        kind, seconds, prefix, reason = m.group(1), m.group(2), m.group(3), (m.group(4) or "").strip()
        hits = [c for c in block.commands if c.text.startswith(prefix)]
        if not hits:
            raise ReadmeError(f"{page}:{number}: {prefix!r} matches no command of the block below it")
        if kind in ("skip", "fails") and not reason:
            raise ReadmeError(f"{page}:{number}: {kind} {prefix!r} needs a reason after ':'")
        for c in hits:
            if kind == "skip":
                c.mode, c.reason = Mode.SKIP, reason
            elif kind == "fails":
                c.mode, c.reason = Mode.FAILS, reason
            else:
                c.retry = int(seconds)


def parse(path: Path, page: str | None = None) -> list[Block]:
    """The command blocks of one page; `page` names it in errors (default: the file's name)."""
    page = page or path.name
    blocks: list[Block] = []
    section = ""
    directives: list[tuple[int, str]] = []
    in_marker = in_fence = False
    fence: list[tuple[int, str]] = []
    fence_line = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if in_fence:
            if line.startswith("```"):
                in_fence = False
                commands = _commands(fence, page)
                if commands:
                    block = Block(section, fence_line, commands, page=page)
                    _apply(block, directives)
                    blocks.append(block)
                elif directives:
                    raise ReadmeError(f"{page}:{fence_line}: readme-test marker over a block without `$ ` lines")
                directives = []
            else:
                fence.append((number, line))
            continue
        if in_marker:
            if line.strip() == "-->":
                in_marker = False
            elif line.strip():
                directives.append((number, line.strip()))
            continue
        if line.strip() == MARKER_OPEN:
            in_marker = True
        elif line.startswith("```"):
            in_fence, fence, fence_line = True, [], number
        elif (m := _HEADING.match(line)) is not None:
            section = m.group(2).strip()
            if directives:
                raise ReadmeError(f"{page}:{directives[0][0]}: readme-test marker not followed by a block")
    return blocks


def shown_pattern(line: str) -> re.Pattern[str]:
    """A shown output line as a pattern: spaces collapse, every number stands for any number."""
    parts = re.split(r"(\d+)", " ".join(line.split()))
    return re.compile("".join(r"\d+" if p.isdigit() else re.escape(p) for p in parts))


def missing_output(shown: list[str], actual: str) -> list[str]:
    """The shown lines that do not appear, in order, among the actual output's lines."""
    lines = [" ".join(a.split()) for a in actual.splitlines()]
    missing, at = [], 0
    for s in shown:
        pattern = shown_pattern(s)
        for i in range(at, len(lines)):
            if pattern.fullmatch(lines[i]):
                at = i + 1
                break
        else:
            missing.append(s)
    return missing
