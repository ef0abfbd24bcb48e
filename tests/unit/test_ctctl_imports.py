"""ctctl's start-up cost is what a command imports (a script calling `ctctl list` in a loop pays
it every time). Checked by the set of modules real runs loaded, not by a timing (the host is
shared): a plain `ctctl list` is answered without click (ctctl/listing.py), any other list
through click without asyncio, TLS, tarballs or the host checks; both print the same bytes.
And the table of lazily loaded commands (ctctl/cli.py NOUNS) against the modules' COMMANDS."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctctl.cli import NOUNS
from tests.unit.test_core_ctctl import FakeCtd

REPO = Path(__file__).resolve().parents[2]
# never on a list path: the event loop and websockets (exec/console), TLS and http.client
# (remotes), tarballs (vagrant boxes), the host checks, the daemon
HEAVY = {"asyncio", "aiohttp", "ssl", "http", "email", "tarfile", "hostcheck", "ctd", "tomllib"}
FAST = {"ctctl", "ctctl.main", "ctctl.listing", "ctctl.client", "ctctl.errors"}
CLICK_PATH = FAST | {"ctctl.cli", "ctctl.connect", "ctctl.remotes", "ctctl.shared", "ctctl.refs", "ctctl.output",
                     "ctctl.instance", "ctctl.admin", "ctctl.nic"}
WEB = {"id": 100, "name": "web", "type": "container", "state": "running", "pid": 4242, "template": "busybox",
       "limits": {"numproc": 64}, "disk": {"used": 5 << 20, "limit": 1 << 30}, "tags": {"plan": "gold"},
       "nics": [{"addresses": ["10.0.3.5", "fd00::5"]}], "disabled": False}
DB = {"id": 101, "name": "db", "type": "vm", "state": "stopped", "pid": None, "template": "debian-12",
      "limits": {}, "disk": None, "tags": {}, "nics": [], "disabled": True}


@pytest.fixture
def ctd(tmp_path: Path) -> Iterator[FakeCtd]:
    fake = FakeCtd(tmp_path / "ctd.sock")
    # two pages: the client must follow "next"
    fake.handler = lambda m, p, b: (200, {"instances": [DB], "total": 2, "next": None} if "offset=1" in p
                                    else {"instances": [WEB], "total": 2, "next": 1})
    yield fake
    fake.close()


def ctctl(tmp_path: Path, socket: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """A whole ctctl run; what it printed and every module it had loaded."""
    probe = ("import sys, json\n"
             f"sys.argv = ['ctctl', *{list(args)!r}]\n"
             "from ctctl.main import main\n"   # as the console script does (it asks for __path__)
             "code = 0\n"
             "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
             "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
             "sys.exit(code)\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
                            "CTD_SOCKET": str(socket)})
    *err, loaded = r.stderr.splitlines()
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout, "\n".join(err)), set(json.loads(loaded))


@pytest.mark.parametrize("fmt", [[], ["--format", "json"]], ids=["table", "json"])
def test_plain_list_skips_click_and_prints_what_the_click_path_prints(tmp_path: Path, ctd: FakeCtd,
                                                                      fmt: list[str]) -> None:
    fast, loaded = ctctl(tmp_path, ctd.path, "list", *fmt)
    assert {m for m in loaded if m.startswith("ctctl")} == FAST and "click" not in loaded
    assert {m.split(".")[0] for m in loaded} & HEAVY == set()
    # --socket: not the plain line, so click answers it
    slow, loaded = ctctl(tmp_path, ctd.path, "--socket", str(ctd.path), "list", *fmt)
    assert "ctctl.cli" in loaded and {m.split(".")[0] for m in loaded} & HEAVY == set()
    assert {m for m in loaded if m.startswith("ctctl")} <= CLICK_PATH
    assert fast.stdout == slow.stdout and fast.returncode == slow.returncode == 0
    if fmt:
        assert [i["name"] for i in json.loads(fast.stdout)] == ["web", "db"]
    else:
        assert fast.stdout.splitlines() == [
            "ID   NAME  TYPE       STATE               PID   IPV4      DISK       TEMPLATE   LIMITS      TAGS",
            "100  web   container  running             4242  10.0.3.5  5.0M/1.0G  busybox    numproc=64  plan=gold",
            "101  db    vm         stopped (disabled)  -     -         -          debian-12  -           -"]


def test_an_unreachable_ctd_is_one_line_on_both_paths(tmp_path: Path) -> None:
    for args in (["list"], ["list", "--state", "running"]):
        r, _ = ctctl(tmp_path, tmp_path / "none.sock", *args)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.startswith("ctctl: cannot reach ctd at") and len(r.stderr.splitlines()) == 1, r.stderr


def test_the_lazy_table_names_every_command_of_every_noun() -> None:
    for noun, names in NOUNS.items():
        module: Any = importlib.import_module(f"ctctl.{noun}")
        assert tuple(c.name for c in module.COMMANDS) == names, noun
