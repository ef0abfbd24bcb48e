"""Process handling of the VM layer without QEMU: the cgroup-joining launcher, error messages,
pid identity, run_dir preparation."""
from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ctd.errors import Conflict, InvalidRequest, OperationFailed
from ctd.instance.vm import process
from ctd.instance.vm.spec import MiB, Firmware, VmSpec


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_launcher_joins_cgroups_then_execs(tmp_path: Path) -> None:
    """The pid written into every cgroup.procs is the program's own (exec keeps it)."""
    out = tmp_path / "pid"
    prog = script(tmp_path / "daemon", f'echo $$ > "{out}"\n')
    procs = [tmp_path / "memory.procs", tmp_path / "pids procs"]
    for p in procs:
        p.write_text("")
    asyncio.run(process._spawn_daemon("test", [str(prog)], [str(p) for p in procs], 5))
    pid = out.read_text().strip()
    assert pid.isdigit() and all(p.read_text().strip() == pid for p in procs)


def test_launcher_reports_the_programs_own_message(tmp_path: Path) -> None:
    prog = script(tmp_path / "qemu", 'echo "qemu-system-x86_64: -foo: invalid option" >&2\nexit 1\n')
    with pytest.raises(OperationFailed, match=r"QEMU failed to start \(exit 1\): qemu-system-x86_64: -foo: invalid option"):
        asyncio.run(process._spawn_daemon("QEMU", [str(prog)], None, 5))


def test_launcher_cgroup_failure_and_missing_program(tmp_path: Path) -> None:
    prog = script(tmp_path / "never-run", f'touch "{tmp_path}/ran"\n')
    with pytest.raises(OperationFailed, match="cannot put QEMU into the VM's cgroup: .*nonexistent"):
        asyncio.run(process._spawn_daemon("QEMU", [str(prog)], [str(tmp_path / "nonexistent/cgroup.procs")], 5))
    assert not (tmp_path / "ran").exists()
    with pytest.raises(OperationFailed, match="cannot start QEMU: .*/nope/qemu"):
        asyncio.run(process._spawn_daemon("QEMU", ["/nope/qemu"], None, 5))


def test_launcher_timeout_kills_what_it_started(tmp_path: Path) -> None:
    out = tmp_path / "pid"
    prog = script(tmp_path / "hang", f'echo $$ > "{out}"\nexec sleep 30\n')
    t0 = time.monotonic()
    with pytest.raises(OperationFailed, match="did not finish starting within 0.5 s"):
        asyncio.run(process._spawn_daemon("QEMU", [str(prog)], None, 0.5))
    assert time.monotonic() - t0 < 5
    assert not process._alive(int(out.read_text()))


def test_wait_exit() -> None:
    async def go() -> None:
        p = subprocess.Popen(["sleep", "0.3"])
        try:
            assert await process.wait_exit(p.pid, 0.05) is False
            assert await process.wait_exit(p.pid, 5) is True   # zombie counts as gone
        finally:
            p.wait()
        assert await process.wait_exit(p.pid, 1) is True        # and so does a reaped pid
    asyncio.run(go())


def spec(tmp_path: Path, **kw: object) -> VmSpec:
    base: dict[str, object] = dict(name="vm1", uuid=str(uuid.uuid4()), ram=64 * MiB, cpus=1,
                                   run_dir=tmp_path / "run", machine="pc")
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def test_find_qemu_checks_program_and_pidfile(tmp_path: Path) -> None:
    s = spec(tmp_path)
    s.run_dir.mkdir()
    s.pidfile.write_text(f"{os.getpid()}\n")     # a live pid, but not QEMU
    assert process.find_qemu(s) is None
    fake = subprocess.Popen(["qemu-system-x86_64", "-c", "import time; time.sleep(60)", "-pidfile", str(s.pidfile)],
                            executable=sys.executable)
    try:
        s.pidfile.write_text(f"{fake.pid}\n")
        assert process.find_qemu(s) == fake.pid
        other = spec(tmp_path, run_dir=tmp_path / "other")    # same pid in another VM's pidfile
        other.run_dir.mkdir()
        other.pidfile.write_text(f"{fake.pid}\n")
        assert process.find_qemu(other) is None
        with pytest.raises(Conflict, match="already runs"):
            asyncio.run(process.start(s))
    finally:
        fake.kill()
        fake.wait()
    assert process.find_qemu(s) is None


def test_prepare_run_dir(tmp_path: Path) -> None:
    template = tmp_path / "VARS.fd"
    template.write_bytes(b"vars" * 100)
    s = spec(tmp_path, profile="windows", machine="q35", firmware=Firmware(tmp_path / "CODE.fd", template, True),
             nvram=tmp_path / "state" / "vars.fd")
    s.run_dir.mkdir()
    for p in s.runtime_files():
        p.write_text("stale")
    process.prepare_run_dir(s)
    assert stat.S_IMODE(s.run_dir.stat().st_mode) == 0o700
    assert s.nvram_path.read_bytes() == template.read_bytes()
    assert stat.S_IMODE(s.nvram_path.stat().st_mode) == 0o600
    assert not any(p.exists() for p in s.runtime_files())
    s.nvram_path.write_bytes(b"guest wrote this")
    process.prepare_run_dir(s)
    assert s.nvram_path.read_bytes() == b"guest wrote this"   # never overwritten


def test_swtpm_argv(tmp_path: Path) -> None:
    s = spec(tmp_path, tpm=True)
    argv = process.swtpm_argv(s)
    run = s.run_dir
    assert argv[:3] == ["swtpm", "socket", "--tpm2"]
    assert argv[argv.index("--ctrl") + 1] == f"type=unixio,path={run}/swtpm.sock,mode=0600"
    assert argv[argv.index("--tpmstate") + 1] == f"dir={run}/tpm,mode=0600"
    assert argv[argv.index("--pid") + 1] == f"file={run}/swtpm.pid"
    assert "--daemon" in argv and "--terminate" in argv
    with pytest.raises(InvalidRequest, match="comma"):
        process.swtpm_argv(spec(tmp_path, tpm=True, tpm_state_dir=tmp_path / "a,b"))


def test_stop_of_a_gone_vm_cleans_up(tmp_path: Path) -> None:
    s = spec(tmp_path)
    s.run_dir.mkdir()
    for p in s.runtime_files():
        p.write_text("stale")
    p = subprocess.Popen(["true"])
    p.wait()
    assert asyncio.run(process.stop(s, p.pid)) == "gone"
    assert not any(f.exists() for f in s.runtime_files())


def test_stop_never_signals_a_pid_that_is_not_this_vms_qemu(tmp_path: Path) -> None:
    """After a ctd restart the recorded pid may belong to anything by now."""
    s = spec(tmp_path)
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        assert asyncio.run(process.stop(s, stranger.pid, timeout=0.1)) == "gone"
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
