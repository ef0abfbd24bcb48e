"""Lint and types as part of the suite, so CI enforces them (settings in pyproject.toml):
ruff's full rule set and mypy --strict on the packages that are clean (cgroups/, hostcheck/, ctctl/),
pyflakes (unused imports, undefined names) on the whole tree."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STRICT = ["cgroups", "hostcheck", "ctctl"]
EVERYWHERE = ["ctd", "ctctl", "cgroups", "hostcheck", "tests", "bench"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("args", [["ruff", "check", *STRICT], ["ruff", "check", "--select", "F", *EVERYWHERE]],
                         ids=["full-rules-on-strict-packages", "pyflakes-everywhere"])
def test_ruff_is_clean(args: list[str]) -> None:
    r = run(*args)
    assert r.returncode == 0, f"ruff {' '.join(args[1:])}:\n{r.stdout}{r.stderr}"


def test_mypy_strict_is_clean_on_cgroups_and_hostcheck() -> None:
    r = run("mypy", *STRICT)
    assert r.returncode == 0, f"mypy:\n{r.stdout}{r.stderr}"
