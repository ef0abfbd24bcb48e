"""Bytes a guest wrote, made safe to show on the admin's terminal.

Abuse: a console log is the guest's own bytes. Printed as they are, escape sequences in it act on
the terminal that shows them: an OSC sequence sets the window title or (OSC 52) the clipboard, a
carriage return or cursor movement hides a line behind another, bidi overrides reorder what is
read. show() keeps text, newlines and tabs; drops colour and cursor sequences (CSI); shows every
other control character, C1 control and bidi override as a visible escape (\\x1b, \\u202e).
"""

from __future__ import annotations

import re

CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
KEEP = {"\n", "\t"}
BIDI = {*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A)), "\u200e", "\u200f", "\u061c"}


def _visible(ch: str) -> str:
    code = ord(ch)
    if ch in KEEP:
        return ch
    if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
        return f"\\x{code:02x}"
    if ch in BIDI:
        return f"\\u{code:04x}"
    return ch


def show(data: bytes) -> str:
    """What to print on a terminal for data (CRLF as the newline it means)."""
    text = CSI.sub("", data.decode(errors="replace").replace("\r\n", "\n"))
    return "".join(_visible(ch) for ch in text)
