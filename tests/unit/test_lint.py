"""Lint and types as part of the suite, so CI enforces them (settings in pyproject.toml):
ruff's full rule set on the packages that are clean (cgroups/, hostcheck/, ctd/linux/,
ctd/network/, ctd/state/, ctctl/), mypy --strict on cgroups/, hostcheck/, ctd/linux/, ctd/network/
and ctctl/
(the flags are listed per module in pyproject.toml), pyflakes (unused imports, undefined names)
on the whole tree."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FULL_RULES = ["cgroups", "hostcheck", "ctd/linux", "ctd/network", "ctd/state", "ctctl"]
STRICT_TYPES = ["cgroups", "hostcheck", "ctd/linux", "ctd/network", "ctctl"]
EVERYWHERE = ["ctd", "ctctl", "cgroups", "hostcheck", "tests", "bench"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("args", [["ruff", "check", *FULL_RULES], ["ruff", "check", "--select", "F", *EVERYWHERE]],
                         ids=["full-rules-on-clean-packages", "pyflakes-everywhere"])
def test_ruff_is_clean(args: list[str]) -> None:
    r = run(*args)
    assert r.returncode == 0, f"ruff {' '.join(args[1:])}:\n{r.stdout}{r.stderr}"


def test_mypy_strict_is_clean_on_the_typed_packages() -> None:
    r = run("mypy", *STRICT_TYPES)
    assert r.returncode == 0, f"mypy:\n{r.stdout}{r.stderr}"
