"""Shared fixtures: a real ctd on a throwaway state dir and socket, containers that clean up."""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ctctl.client import ApiError, Client  # noqa: E402
from ctd.errors import Conflict  # noqa: E402
from ctd.ownership import IDS_PREFIX, Claim, Ownership  # noqa: E402
from ctd.storage.pool import release_pool  # noqa: E402

# Test daemons take id areas of their own (ctd refuses an area another live ctd overlaps):
# slots of TEST_IDMAP_SLOT ids from TEST_IDMAP_BASE, far from a ctd that runs here for real
# (its default area ends below 600M) and below tests/robustness' area (from 1e9).
TEST_IDMAP_BASE = 600_000_000
TEST_IDMAP_SLOT = 20_000_000
TEST_IDMAP_SLOTS = 20
_SLOTS = random.SystemRandom()


def free_idmap_area() -> tuple[int, int]:
    """A random test slot: (base, end). A taken one makes ctd refuse; Daemon.start tries another."""
    base = TEST_IDMAP_BASE + _SLOTS.randrange(TEST_IDMAP_SLOTS) * TEST_IDMAP_SLOT
    # ctd also claims the 65536 user-namespace owner ids below its idmap_base: inside the slot
    return base + 65536, base + TEST_IDMAP_SLOT


def pytest_sessionstart(session: pytest.Session) -> None:
    """A test run killed before its teardown leaves its daemons' pools and lxcfs mounted in
    pytest's old temp dirs (which pytest then cannot delete): release those, only those."""
    if os.geteuid() != 0:
        return
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if "/pytest-of-" in target and "/garbage-" in target and target.endswith(("/storage", "/lxcfs/mnt")):
            subprocess.run(["umount", "--lazy", target], capture_output=True)
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    for line in loops.splitlines():
        if "/pytest-of-" in line and "/garbage-" in line and "pool.img" in line:
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root and the real kernel (run the suite as root)")


@dataclass
class CtlResult:
    code: int
    out: str
    err: str


class AreaTaken(Exception):
    """Another live ctd owns (part of) the id area, or the NIC prefix, a test daemon tried."""


def random_nic_prefix() -> str:
    return "".join(_SLOTS.choice("abcdfghjkmnqrstwxyz") for _ in range(2))


@dataclass
class Daemon:
    state_dir: Path
    socket: Path
    cgroup_name: str
    proc: subprocess.Popen | None = None
    log: Path | None = None
    extra_config: str = ""
    launcher: list[str] = field(default_factory=list)  # e.g. nsenter --net=…: ctd in a netns of the test's
    # NIC names are host-wide: a prefix of its own keeps this daemon off other daemons' names.
    nic_prefix: str = field(default_factory=lambda: random_nic_prefix())
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    idmap_area: tuple[int, int] | None = None  # (base, end); None: a free test slot, found at start
    # While the test has its daemon stopped or killed, the test holds its id area and NIC prefix
    # (a daemon of another test session must not take them: the restart has to keep both).
    _hold: Ownership | None = None

    def hold_claims(self) -> None:
        if self.idmap_area is None or self._hold is not None:
            return
        base, end = self.idmap_area
        owners = base - 65536  # ctd's claim starts at its user-namespace owner block
        hold = Ownership(self.state_dir)
        try:
            hold.claim([Claim(f"{IDS_PREFIX}{owners}-{end}", "idmap_base", f"{owners}-{end - 1}", (owners, end)),
                        Claim(f"nic-{self.nic_prefix}", "nic_prefix", self.nic_prefix)])
        except Conflict:
            return  # taken in the moment between the daemon's end and here: the restart will say so
        self._hold = hold

    def release_claims(self) -> None:
        if self._hold is not None:
            self._hold.release()
            self._hold = None

    def area_choices(self) -> Iterator[tuple[int, int]]:
        """Id areas to try: the one set, or random free slots."""
        if self.idmap_area is not None:
            yield self.idmap_area
            return
        for _ in range(3 * TEST_IDMAP_SLOTS):
            yield free_idmap_area()

    @property
    def client(self) -> Client:
        return Client(str(self.socket), timeout=120)

    def start(self) -> None:
        for area in self.area_choices():
            try:
                return self._start_with(area)
            except AreaTaken as taken:
                if "owns nic_prefix" in str(taken):  # another live test daemon drew the same letters
                    self.nic_prefix = random_nic_prefix()
        raise RuntimeError("no free test id area or NIC prefix: other test daemons hold them all")

    def config_text(self, area: tuple[int, int]) -> str:
        return (f'cgroup_name = "{self.cgroup_name}"\nidmap_base = {area[0]}\nidmap_end = {area[1]}\n'
                f'nft_table = "{self.cgroup_name.replace("-", "_")}"\n'
                f'nic_prefix = "{self.nic_prefix}"\n'
                # no host bridge behind the suite's back: a test that wants one names it
                + ('' if "default_network" in self.extra_config else 'default_network = ""\n')
                + self.extra_config)

    def _start_with(self, area: tuple[int, int]) -> None:
        self.release_claims()
        config = self.state_dir.parent / f"{self.state_dir.name}.toml"
        config.write_text(self.config_text(area))
        self.log = self.state_dir.parent / f"{self.state_dir.name}.log"
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "ctd.daemon", "--config", str(config), "--state-dir", str(self.state_dir),
             "--socket", str(self.socket), "--log-level", "debug"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = self.log.read_bytes()[offset:].decode(errors="replace")
                if ("owns host ids" in said or "owns nic_prefix" in said) and self.idmap_area is None:
                    raise AreaTaken(said)  # first start only: a restart must keep both
                raise RuntimeError(f"ctd exited at start:\n{self.log.read_text()[-3000:]}")
            try:
                self.client.get("/1.0")
                self.idmap_area = area  # a restart keeps it
                return
            except ApiError:
                time.sleep(0.05)
        raise RuntimeError("ctd did not answer within 20 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.hold_claims()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.hold_claims()

    def ctl(self, *args: str, input: str | None = None, timeout: float = 120) -> CtlResult:
        r = subprocess.run([sys.executable, "-m", "ctctl.main", "--socket", str(self.socket), *args],
                           capture_output=True, text=True, input=input if input is not None else "",
                           timeout=timeout, cwd=REPO)
        return CtlResult(r.returncode, r.stdout, r.stderr)

    def ok(self, *args: str, **kw) -> str:  # type: ignore[no-untyped-def]
        r = self.ctl(*args, **kw)
        assert r.code == 0, f"ctctl {' '.join(args)} failed ({r.code}): {r.err}{r.out}"
        return r.out

    def sh(self, name: str, script: str, **kw) -> CtlResult:  # type: ignore[no-untyped-def]
        return self.ctl("exec", name, "--", "/bin/sh", "-c", script, **kw)

    def instance(self, name: str) -> dict:
        return self.client.get(f"/1.0/instances/{name}")["instance"]

    def group(self, name: str):  # type: ignore[no-untyped-def]
        """A running container's cgroup, found where ctd says it is (its cgroup2 directory may
        be named after the standby init it started in)."""
        from cgroups import detect_manager
        dirs = self.instance(name)["cgroups"] or {}
        fixed = {k: os.path.basename(d) for k, d in dirs.items() if os.path.basename(d) != f"ct-{name}"}
        return detect_manager(base_name=self.cgroup_name).group(f"ct-{name}", fixed)

    def unique(self, prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:6]}"

    def destroy_all(self) -> None:
        for inst in self.client.get("/1.0/instances")["instances"]:
            try:
                self.client.run("DELETE", f"/1.0/instances/{inst['name']}", query={"force": "true"})
            except ApiError:
                pass
        for net in self.client.get("/1.0/networks")["networks"]:
            try:
                self.client.request("DELETE", f"/1.0/networks/{net['name']}")
            except ApiError:
                pass

    def rootfs(self, name: str) -> Path:
        return self.state_dir / "storage" / "instances" / name / "rootfs"

    def cgroup_dirs(self) -> list[Path]:
        """Every directory of this daemon's cgroup base that exists, in every hierarchy."""
        found = []
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for mount in Path("/sys/fs/cgroup").iterdir():
                base = mount / path.lstrip("/") / self.cgroup_name
                if (controllers and mount.name in controllers.replace("name=", "").split(",")) and base.exists():
                    found.append(base)
        return found


def _start_daemon(tmp: Path, tag: str, extra: str = "") -> Daemon:
    needs_root()
    state = tmp / f"state-{tag}"
    d = Daemon(state, tmp / f"ctd-{tag}.sock", f"ctd-test-{uuid.uuid4().hex[:8]}", extra_config=extra)
    d.start()
    d.client.run("POST", "/1.0/templates", {"name": "busybox"})
    return d


def _teardown(d: Daemon) -> None:
    try:
        if d.proc and d.proc.poll() is None:
            d.destroy_all()
    finally:
        d.stop()
        d.release_claims()
        force_cleanup(d)  # what a daemon that could not come back left (nothing, normally)
        release_pool(d.state_dir)  # ctd leaves its pool mounted across restarts; a test may not
    # Nothing may outlive the daemon's containers: no cgroup, no mount under its state dir.
    leftovers = d.cgroup_dirs()
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(d.state_dir) in line]
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    table = d.cgroup_name.replace("-", "_")
    assert not leftovers and not mounts and table not in nft, \
        f"leaked: cgroups {leftovers}, mounts {mounts}, nft table {table if table in nft else '-'}"


def force_cleanup(d: Daemon) -> None:
    """Without a daemon: end every process left in its cgroups (by PID: they are all this
    test's), remove the groups deepest first, its NICs, nft table and mounts under its state dir."""
    for base in d.cgroup_dirs():
        groups = sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for group in [*groups, base]:
            procs = group / "cgroup.procs"
            for _ in range(50):
                pids = [int(x) for x in procs.read_text().split()] if procs.exists() else []
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
        for group in [*groups, base]:
            try:
                group.rmdir()
            except OSError:
                pass
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if re.fullmatch(rf"{d.nic_prefix}p?\d+\.\d+", name):  # ctd's veth names only (plumbing.py)
            subprocess.run(["ip", "link", "delete", name], capture_output=True)
    table = d.cgroup_name.replace("-", "_")
    for family in ("bridge", "inet", "ip", "ip6"):
        subprocess.run(["nft", "delete", "table", family, table], capture_output=True)
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        target = line.split()[4]
        if target.startswith(str(d.state_dir) + "/") and not target.endswith("/storage"):
            subprocess.run(["umount", "--lazy", target], capture_output=True)


@pytest.fixture(scope="session")
def ctd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the session, with the busybox template built."""
    d = _start_daemon(tmp_path_factory.mktemp("ctd"), "main")
    yield d
    _teardown(d)


@pytest.fixture
def fresh_ctd(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of the test's own, for tests that kill or restart it."""
    d = _start_daemon(tmp_path, "own")
    yield d
    try:
        if d.proc and d.proc.poll() is not None:  # the test killed it: bring it back to clean up
            d.start()
    finally:  # a daemon that cannot come back still has its containers and pool removed
        _teardown(d)


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/helpers/probe.c, built static so it runs in any container."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: ./setup.sh installs it")
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(REPO / "tests/helpers/probe.c")], check=True)
    return out


@pytest.fixture
def make_container(ctd: Daemon, probe: Path) -> Iterator:
    """make_container(**create options) -> name; started unless start=False; destroyed after.
    An option given a list is repeated (nic=["network=a", "network=b"])."""
    made: list[str] = []

    def make(start: bool = True, prefix: str = "t", **options: str) -> str:
        name = ctd.unique(prefix)
        args = ["create", name, "--template", "busybox"]
        for key, value in options.items():
            for one in value if isinstance(value, list) else [value]:  # a list: the option repeated
                args += [f"--{key}"] if one is True else [f"--{key}", str(one)]
        ctd.ok(*args)
        made.append(name)
        target = ctd.rootfs(name) / "usr/local/bin/probe"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(probe, target)
        if start:
            ctd.ok("start", name)
        return name

    yield make
    for name in made:
        ctd.ctl("destroy", "--force", name)
