"""The fixtures' own guarantees: what a test daemon leaves is removed even when it cannot come
back, and a stopped test daemon keeps its id area and NIC prefix from other test sessions."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from ctd.errors import Conflict
from ctd.ownership import IDS_PREFIX, Claim, Ownership
from ctd.storage.pool import release_pool
from tests.conftest import Daemon, force_cleanup, needs_root


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent (the killed daemon's spawner) to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_force_cleanup_removes_what_a_killed_daemon_left(fresh_ctd):
    d = fresh_ctd
    d.ok("create", "left", "--template", "busybox")
    d.ok("start", "left")
    pid = d.instance("left")["pid"]
    d.kill9()
    assert alive(pid) and d.cgroup_dirs()
    force_cleanup(d)
    assert not alive(pid)
    assert not d.cgroup_dirs()
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if str(d.state_dir) in line and not line.split()[4].endswith("/storage")]
    assert not mounts, mounts
    # the fixture brings it back for its teardown: recovery finds the container gone
    d.start()
    assert d.instance("left")["state"] == "stopped"


def test_a_stopped_test_daemon_keeps_its_area_from_others(fresh_ctd):
    d = fresh_ctd
    d.stop()
    base, end = d.idmap_area
    other = Ownership(d.state_dir.parent / "other")
    try:
        other.claim([Claim(f"{IDS_PREFIX}{base}-{base + 65536}", "idmap_base", "x", (base, base + 65536))])
    except Conflict as exc:
        assert "overlap" in str(exc)
    else:
        other.release()
        raise AssertionError("another claim took the stopped daemon's id area")
    d.start()  # its own restart gets it back
    assert d.client.get("/1.0")["pid"] == d.proc.pid


def test_a_ctd_that_fails_half_way_through_its_start_leaves_nothing(tmp_path):
    """The HTTPS port is taken: ctd has made its pool, cgroups and lxcfs by then. It exits 1,
    saying why, and takes its cgroups, lxcfs and nft table down with it."""
    needs_root()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    d = Daemon(tmp_path / "state", tmp_path / "ctd.sock", f"ctd-test-{uuid.uuid4().hex[:8]}",
               extra_config=f'https_address = "127.0.0.1:{port}"\n')
    try:
        with pytest.raises(RuntimeError, match=f"cannot listen on https_address 127.0.0.1:{port}"):
            d.start()
        assert d.proc is not None and d.proc.returncode == 1
        assert not d.cgroup_dirs()
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if str(d.state_dir) in line and not line.split()[4].endswith("/storage")]
        assert not mounts, mounts  # lxcfs's mount
        lxcfs = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(d.state_dir).encode()
                 in _cmdline(pid) and b"lxcfs" in _cmdline(pid)]
        assert not lxcfs, lxcfs
        nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert d.cgroup_name.replace("-", "_") not in nft
    finally:
        taken.close()
        d.release_claims()
        force_cleanup(d)
        release_pool(d.state_dir)


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
