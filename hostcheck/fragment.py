"""The annotated kernel config fragment, kernel-patches/ctd.config: the list of options ctd needs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# Canonical file in a source checkout; the packaged copy is used when hostcheck is installed.
REPO_FRAGMENT = Path(__file__).resolve().parent.parent / "kernel-patches" / "ctd.config"
FRAGMENT_REF = "kernel-patches/ctd.config"

_SECTION = re.compile(r"^##\s+(\S+)\s*$")
_ANNOTATION = re.compile(r"^#\s*(required|optional)((?:\s+[a-z]+=[\w.\-]+)*)\s*:\s*(.+?)\s*$")
_OPTION = re.compile(r"^(CONFIG_[A-Z0-9_]+)=(y|m)$")


class FragmentError(ValueError):
    pass


@dataclass(frozen=True)
class KOption:
    name: str  # CONFIG_...
    value: str  # "y" or "m" as the fragment asks
    required: bool
    purpose: str
    section: str
    any_of: str | None = None  # group name: met when any member is set
    since: tuple[int, int] | None = None  # exists only from this kernel version on
    arch: str | None = None  # exists only on this kconfig architecture


def fragment_path() -> Path:
    if REPO_FRAGMENT.is_file():
        return REPO_FRAGMENT
    return Path(str(resources.files("hostcheck") / "data" / "ctd.config"))


def parse_version(text: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_fragment(text: str) -> list[KOption]:
    """Options with their annotations; every option must carry one (FragmentError otherwise)."""
    options: list[KOption] = []
    section = "general"
    pending: tuple[bool, dict[str, str], str] | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if m := _SECTION.match(line):
            section, pending = m.group(1), None
        elif m := _ANNOTATION.match(line):
            attrs = dict(kv.split("=", 1) for kv in m.group(2).split())
            unknown = set(attrs) - {"any", "since", "arch"}
            if unknown:
                raise FragmentError(f"line {lineno}: unknown annotation key(s) {sorted(unknown)}")
            pending = (m.group(1) == "required", attrs, m.group(3))
        elif m := _OPTION.match(line):
            if pending is None:
                raise FragmentError(f"line {lineno}: {m.group(1)} has no '# required:' or '# optional:' line")
            required, attrs, purpose = pending
            since = parse_version(attrs["since"]) if "since" in attrs else None
            options.append(KOption(m.group(1), m.group(2), required, purpose, section,
                                   attrs.get("any"), since, attrs.get("arch")))
            pending = None
        elif line and not line.startswith("#"):
            raise FragmentError(f"line {lineno}: not a CONFIG_...=y|m line: {line!r}")
    names = [o.name for o in options]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise FragmentError(f"options listed twice: {sorted(dupes)}")
    return options


def load_fragment(path: Path | None = None) -> list[KOption]:
    return parse_fragment((path or fragment_path()).read_text())
