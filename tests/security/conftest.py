"""Fixtures and helpers of the tenant-isolation escape suite.

Every attempt runs as root inside a container made by `make_container` (tests/conftest.py),
through the static `probe` (tests/helpers/probe.c), which prints "ok" or the errno name.
Attacks only ever target things that fail safely or that the test set up itself: a value
written to a host control file is always the value it already holds, host processes are
throwaway `sleep`s started here and killed by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(params=[False, True], ids=["unprivileged", "privileged"])
def privileged(request: pytest.FixtureRequest) -> bool:
    """Run the attempt in an unprivileged container, then in a privileged one."""
    return request.param


def probe(ctd, name: str, *args: str, timeout: float = 120) -> str:  # type: ignore[no-untyped-def]
    """Output of `probe ARGS` run by root inside `name` ("ok", an errno name, or a report)."""
    r = ctd.ctl("exec", name, "--", "probe", *args, timeout=timeout)
    assert r.code in (0, 1), f"probe {' '.join(args)} did not run ({r.code}): {r.err}{r.out}"
    return r.out.strip()


def host_value(path: str) -> str:
    """What a host control file holds now: the only thing a test ever tries to write to it."""
    return Path(path).read_text().rstrip("\n")


def ns_inode(pid: int | str, ns: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{ns}").st_ino


def container_pids(init_pid: int) -> list[int]:
    """Host pids of every process in the pid namespace of init_pid (its descendants there)."""
    target = ns_inode(init_pid, "pid")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if ns_inode(entry, "pid") == target:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def alive(pid: int) -> bool:
    """Running (not a zombie) on the host."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return out


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


@pytest.fixture
def host_sleeper() -> Iterator:
    """start(uid=0) -> Popen of a throwaway `sleep 300` on the host; killed by its PID after."""
    started: list[subprocess.Popen] = []

    def start(uid: int = 0) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "300"], user=uid, group=uid, extra_groups=[],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()  # by PID: only ever the sleeper this fixture started
        proc.wait(10)


@pytest.fixture(scope="session")
def fake_ldso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/security/fake_ldso.c: a stand-in for a container's dynamic loader (CVE-2019-5736)."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: ./setup.sh installs it")
    out = tmp_path_factory.mktemp("fake-ldso") / "ld-linux-x86-64.so.2"
    subprocess.run(["gcc", "-nostdlib", "-static-pie", "-fPIE", "-O2", "-fno-stack-protector", "-fno-builtin",
                    "-o", str(out), str(HERE / "fake_ldso.c")], check=True)
    return out


# The attempts that a container feature could open a way for are made again with every feature on
# (ctd/instance/container/features.py): a feature must add its one device and nothing else.
FEATURE_RERUN_MODULES = ("test_devices", "test_namespaces", "test_network_and_disk", "test_host_control",
                         "test_syscalls")
ALL_FEATURES = "tun,fuse"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "make" in metafunc.fixturenames and metafunc.module.__name__.rsplit(".", 1)[-1] in FEATURE_RERUN_MODULES:
        metafunc.parametrize("features", ["", ALL_FEATURES], ids=["default", "features"], indirect=True)


@pytest.fixture
def features(request: pytest.FixtureRequest) -> str:
    """The features every container of the attempt gets ("" unless the module is re-run with them)."""
    return getattr(request, "param", "")


@pytest.fixture
def make(make_container, features):  # type: ignore[no-untyped-def]
    """make(privileged=False, **create options) -> name of a started container."""
    def new(privileged: bool = False, **options: str) -> str:
        if features and "features" not in options:
            options = {**options, "features": features}
        if privileged:
            return make_container(privileged=True, **options)
        return make_container(**options)
    return new
