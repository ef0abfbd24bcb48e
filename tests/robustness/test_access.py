"""Access: the socket refuses a user outside group `ctd`; a member of `ctd` manages instances.

Membership in `ctd` equals root on the host (README, docs/security.md): this test only proves the socket's
permissions are what docs/security.md says, with a throwaway user made and removed here.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Daemon, CtlResult

GROUP = "ctd"


@pytest.fixture
def user() -> Iterator[str]:
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.fail("useradd/runuser are missing (passwd and util-linux packages)")
    name = f"ctdtest{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def public_socket(module_ctd: Daemon) -> Iterator[Daemon]:
    """module_ctd restarted with its socket in a directory any user may traverse (pytest's
    tmp dir is 0700), moved back afterwards."""
    d = module_ctd
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        pytest.fail(f"group {GROUP!r} is missing: ./setup.sh creates it (groupadd --system {GROUP})")
    run_dir = Path(f"/run/ctd-test-{uuid.uuid4().hex[:8]}")
    run_dir.mkdir(mode=0o755)
    run_dir.chmod(0o755)
    old = d.socket
    d.stop()
    d.socket = run_dir / "ctd.sock"
    try:
        d.start()
        yield d
    finally:
        d.destroy_all()
        d.stop()
        d.socket = old
        shutil.rmtree(run_dir, ignore_errors=True)
        d.start()


def ctl_as(user: str, d: Daemon, *args: str) -> CtlResult:
    r = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-m", "ctctl.main", "--socket", str(d.socket),
                        *args], capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
    return CtlResult(r.returncode, r.stdout, r.stderr)


def test_socket_is_root_and_group_ctd_only(public_socket: Daemon, user: str) -> None:
    d = public_socket
    st = d.socket.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, grp.getgrnam(GROUP).gr_gid, 0o660)

    refused = ctl_as(user, d, "list")
    lines = refused.err.strip().splitlines()
    assert refused.code != 0 and len(lines) == 1 and "permission denied" in lines[0], refused
    before = {i["name"] for i in d.client.get("/1.0/instances")["instances"]}
    assert ctl_as(user, d, "create", "nope", "--template", "busybox").code != 0
    assert {i["name"] for i in d.client.get("/1.0/instances")["instances"]} == before

    subprocess.run(["usermod", "-aG", GROUP, user], check=True)
    listed = ctl_as(user, d, "list")
    assert listed.code == 0, listed
    name = d.unique("acc")
    for args in (("create", name, "--template", "busybox"), ("start", name), ("status", name),
                 ("exec", name, "--", "true"), ("stop", "--kill", name), ("destroy", name)):
        r = ctl_as(user, d, *args)
        assert r.code == 0, f"ctctl {' '.join(args)} as a member of {GROUP}: {r.err}{r.out}"
    assert name not in {i["name"] for i in d.client.get("/1.0/instances")["instances"]}
