"""Lint and types as part of the suite, so CI enforces them (settings in pyproject.toml):
ruff's full rule set and mypy --strict (the flags are listed per module in pyproject.toml) on the
packages that are clean: cgroups/, hostcheck/, ctctl/ and all of ctd/; pyflakes (unused imports,
undefined names) on the whole tree (tests/ and bench/ too)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLEAN = ["cgroups", "hostcheck", "ctctl", "ctd"]
FULL_RULES = CLEAN
STRICT_TYPES = CLEAN
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
