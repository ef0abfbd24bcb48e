"""The package rules of docs/architecture.md, checked on the source (every import, also inside functions)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file; relative imports are resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                found.append((node.lineno, target))
                if not node.module:  # from . import x
                    found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(directory: str, forbidden: list[str], allowed: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    files = sorted((REPO / directory).rglob("*.py"))
    assert files, f"no Python files under {directory}/"
    bad = []
    for path in files:
        for line, module in imports(path):
            if any(within(module, f) for f in forbidden) and not any(within(module, a) for a in allowed):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return bad


def test_the_import_scanner_sees_every_kind_of_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "ctctl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text(
        "import os\nimport ctd.state as s\nfrom ctd import errors\n"
        "def f():\n    from ctd.api.server import make_app\n"
        "from . import y\nfrom .z import w\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    got = sorted(m for _, m in imports(pkg / "x.py"))
    assert got == sorted(["os", "ctd.state", "ctd", "ctd.api.server", "ctctl", "ctctl.y", "ctctl.z"])
    assert len(violations("ctctl", ["ctd"])) == 3


def test_ctctl_never_imports_ctd() -> None:
    assert violations("ctctl", ["ctd"]) == []


@pytest.mark.parametrize("directory", ["ctd/linux", "cgroups"])
def test_linux_and_cgroups_never_import_state_api_or_ctctl(directory: str) -> None:
    assert violations(directory, ["ctd.state", "ctd.api", "ctctl"]) == []


def test_linux_imports_nothing_else_from_ctd() -> None:
    # docs/architecture.md: linux/ is the thin syscall layer and "imports nothing else from ctd"
    assert violations("ctd/linux", ["ctd"], allowed=["ctd.linux"]) == []


def test_hostcheck_imports_nothing_from_ctd_or_ctctl() -> None:
    assert violations("hostcheck", ["ctd", "ctctl"]) == []


def test_only_netlink_imports_pyroute2() -> None:
    # docs/architecture.md: ctd/network/netlink.py is the only module that imports pyroute2
    bad = [v for v in violations("ctd", ["pyroute2"]) if not v.startswith("ctd/network/netlink.py:")]
    assert bad == []
