"""Start and stop the host processes of a VM: QEMU (daemonised) and, for a TPM, swtpm.

Both are started through a short-lived /bin/sh that first writes its own pid into the VM's
cgroup.procs files and then execs the program: QEMU forks to daemonise, so QEMU and every
thread it makes stay in the VM's cgroup. No preexec_fn: the API process may have threads,
and subprocess without one is a plain fork+exec done in C.

Neither process is ctd's child once started (both daemonise), so they survive a ctd restart;
the pidfile in run_dir plus /proc/PID/cmdline find them again (find_qemu, find_swtpm).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from ctd.errors import Conflict, InvalidRequest, NotFound, OperationFailed
from ctd.instance.vm.argv import build_argv
from ctd.instance.vm.qmp import Qmp
from ctd.instance.vm.spec import VmSpec
from ctd.linux.proc import is_zombie

log = logging.getLogger("ctd.vm")

START_TIMEOUT = 30.0       # QEMU's parent returns once devices are set up: seconds even under TCG
SWTPM = "swtpm"
# $$ of `sh -c` is the pid that exec keeps: the program itself joins the cgroups.
_JOIN_CGROUPS = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; '
                 'shift; n=$((n - 1)); done; exec "$@"')
_CGROUP_FAILED = 125


# --- small process helpers ---------------------------------------------------------------

def _alive(pid: int) -> bool:
    return pid > 0 and os.path.exists(f"/proc/{pid}") and not is_zombie(pid)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _is_ours(pid: int, pidfile: Path, program: str) -> bool:
    """pid is `program` started with this very pidfile: not a recycled pid, not another VM's."""
    if not _alive(pid):
        return False
    argv = _cmdline(pid)
    return bool(argv) and os.path.basename(argv[0]).startswith(program) and \
        any(str(pidfile) in a for a in argv)


def _owned(pidfile: Path, program: str) -> int | None:
    """The live pid in pidfile, if _is_ours."""
    pid = _read_pidfile(pidfile)
    return pid if pid is not None and _is_ours(pid, pidfile, program) else None


def find_qemu(spec: VmSpec) -> int | None:
    """QEMU's pid if this VM's QEMU runs (after a ctd restart: re-attach with Qmp(spec.qmp_socket))."""
    return _owned(spec.pidfile, "qemu-system")


def find_swtpm(spec: VmSpec) -> int | None:
    return _owned(spec.swtpm_pidfile, SWTPM)


async def wait_exit(pid: int, timeout: float | None) -> bool:
    """True once pid has exited (zombie counts), False on timeout. Works for non-children."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    try:
        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(done, timeout)
            return True
        except TimeoutError:
            return not _alive(pid)
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal through a pidfd: a pid recycled since we looked is never hit."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


async def _spawn_daemon(what: str, argv: list[str], cgroup_procs: list[str] | None,
                        timeout: float) -> None:
    """Run a self-daemonising program; return when its foreground parent exits 0.
    OperationFailed carries the program's own stderr otherwise."""
    files = list(cgroup_procs or [])
    wrapped = ["/bin/sh", "-c", _JOIN_CGROUPS, f"ctd-{what}", str(len(files)), *files, *argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *wrapped, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as e:
        raise OperationFailed(f"cannot run /bin/sh to start {what}: {e.strerror}") from None
    try:
        # Pipes reach EOF when the daemon has redirected its stdio to /dev/null (start done).
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill(proc.pid)
        await proc.wait()
        raise OperationFailed(f"{what} did not finish starting within {timeout:g} s") from None
    message = (err or out).decode(errors="replace").strip()
    if proc.returncode == _CGROUP_FAILED:
        raise OperationFailed(f"cannot put {what} into the VM's cgroup: {message}")
    if proc.returncode == 127:
        raise OperationFailed(f"cannot start {what}: {message or argv[0] + ' not found'}")
    if proc.returncode != 0:
        raise OperationFailed(f"{what} failed to start (exit {proc.returncode}): "
                              f"{message or 'no message'}")
    if message:
        log.warning("%s: %s", what, message)


def _unlink(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def prepare_run_dir(spec: VmSpec) -> None:
    """run_dir (0700), the per-VM UEFI variables copied from the template on first use, and
    no stale sockets or pidfiles from a VM that died."""
    spec.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(spec.run_dir, 0o700)   # QMP and VNC sockets in there are the keys to the VM
    fw = spec.uefi
    nvram = spec.nvram_path
    if fw is not None and not nvram.exists():
        nvram.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = nvram.with_name(nvram.name + ".tmp")
        shutil.copyfile(fw.vars_template, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, nvram)   # never a half-copied store
    if find_qemu(spec) is None:
        _unlink(spec.qmp_socket, spec.serial_socket, spec.agent_socket, spec.vnc_socket, spec.pidfile)
    if find_swtpm(spec) is None:
        _unlink(spec.swtpm_socket, spec.swtpm_pidfile)


# --- swtpm -----------------------------------------------------------------------------------

def swtpm_argv(spec: VmSpec) -> list[str]:
    for p in (spec.tpm_dir, spec.swtpm_socket, spec.swtpm_pidfile, spec.swtpm_log):
        if "," in str(p):   # swtpm's option parser has no escape for commas
            raise InvalidRequest(f"TPM path {p} may not contain a comma")
    return [SWTPM, "socket", "--tpm2",
            "--tpmstate", f"dir={spec.tpm_dir},mode=0600",
            "--ctrl", f"type=unixio,path={spec.swtpm_socket},mode=0600",
            "--pid", f"file={spec.swtpm_pidfile}",
            "--log", f"file={spec.swtpm_log},level=1",
            # Exit when QEMU's connection closes: no orphan swtpm after QEMU dies.
            "--terminate", "--daemon"]


async def start_swtpm(spec: VmSpec, cgroup_procs: list[str] | None = None,
                      timeout: float = 10.0) -> int:
    """swtpm listening on spec.swtpm_socket, with persistent state in spec.tpm_dir."""
    if shutil.which(SWTPM) is None:
        raise NotFound("swtpm is not installed (Debian: apt-get install swtpm swtpm-tools)")
    argv = swtpm_argv(spec)
    if (pid := find_swtpm(spec)) is not None:
        raise Conflict(f"swtpm of VM {spec.name} already runs (pid {pid})")
    spec.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    spec.tpm_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _unlink(spec.swtpm_socket, spec.swtpm_pidfile)
    await _spawn_daemon("swtpm", argv, cgroup_procs, timeout)
    pid = _read_pidfile(spec.swtpm_pidfile)
    if pid is None or not _alive(pid) or not spec.swtpm_socket.exists():
        raise OperationFailed(f"swtpm for VM {spec.name} exited right after starting; "
                              f"see {spec.swtpm_log}")
    return pid


async def stop_swtpm(spec: VmSpec, timeout: float = 5.0) -> None:
    """SIGTERM (swtpm saves its state), SIGKILL after timeout; socket and pidfile removed."""
    pid = find_swtpm(spec)
    if pid is not None:
        _kill(pid, signal.SIGTERM)
        if not await wait_exit(pid, timeout):
            _kill(pid)
            await wait_exit(pid, 5.0)
    _unlink(spec.swtpm_socket, spec.swtpm_pidfile)


# --- QEMU ------------------------------------------------------------------------------------

async def start(spec: VmSpec, cgroup_procs: list[str] | None = None,
                timeout: float = START_TIMEOUT) -> int:
    """Start the VM (swtpm first when it has a TPM); QEMU's pid.

    Raises InvalidRequest/NotFound for a bad spec, Conflict if it already runs, and
    OperationFailed with QEMU's own message when QEMU refuses to start. A failure leaves no
    process behind.
    """
    argv = build_argv(spec)
    if (pid := find_qemu(spec)) is not None:
        raise Conflict(f"VM {spec.name} already runs (QEMU pid {pid})")
    if find_swtpm(spec) is not None:   # left by a QEMU that died without closing its TPM link
        await stop_swtpm(spec)
    prepare_run_dir(spec)
    started_tpm = False
    try:
        if spec.has_tpm:
            await start_swtpm(spec, cgroup_procs)
            started_tpm = True
        try:
            await _spawn_daemon("QEMU", argv, cgroup_procs, timeout)
        except OperationFailed as e:
            raise OperationFailed(f"VM {spec.name}: {e.message}") from None
        pid = _read_pidfile(spec.pidfile)
        if pid is None or not _alive(pid):
            raise OperationFailed(f"VM {spec.name}: QEMU exited right after starting"
                                  + (f" (serial log: {spec.serial_log})" if spec.serial_logfile else ""))
        return pid
    except BaseException:
        if (pid := find_qemu(spec)) is not None:   # timeout while half-started
            _kill(pid)
            await wait_exit(pid, 5.0)
        if started_tpm:
            await stop_swtpm(spec)
        _unlink(spec.qmp_socket, spec.serial_socket, spec.agent_socket, spec.vnc_socket, spec.pidfile)
        raise


async def stop(spec: VmSpec, pid: int, timeout: float = 30.0, qmp: Qmp | None = None,
               force: bool = False, fallback: Callable[[], Awaitable[bool]] | None = None) -> str:
    """Stop the VM: ACPI power button, then QMP quit after timeout, then SIGKILL.
    Returns how it ended: 'powerdown', 'agent' (fallback, e.g. the guest agent's shutdown,
    ended it after the button was ignored), 'quit', 'killed' or 'gone'. Cleans run_dir and swtpm.

    Pass the manager's open Qmp session (QEMU serves one client at a time); without one a
    session is opened for the occasion.
    """
    how = "gone"
    try:
        if _is_ours(pid, spec.pidfile, "qemu-system"):   # never signal a recycled pid
            how = await _stop_qemu(spec, pid, timeout, qmp, force, fallback)
    finally:
        await stop_swtpm(spec)
        _unlink(spec.qmp_socket, spec.serial_socket, spec.agent_socket, spec.vnc_socket, spec.pidfile)
    return how


async def _stop_qemu(spec: VmSpec, pid: int, timeout: float, qmp: Qmp | None, force: bool,
                     fallback: Callable[[], Awaitable[bool]] | None) -> str:
    own = None
    try:
        if qmp is None:
            own = qmp = Qmp(spec.qmp_socket)
            try:
                await qmp.connect(timeout=3.0)
            except OperationFailed as e:
                log.warning("VM %s: %s; killing QEMU", spec.name, e.message)
                qmp = None
        if qmp is not None and not force:
            with contextlib.suppress(OperationFailed):
                state = await qmp.status()
                # Never started (-S): no guest OS to ask. Paused: it must run to see the button.
                if state != "prelaunch":
                    if state == "paused":
                        await qmp.cont()
                    await qmp.powerdown()
                    if await wait_exit(pid, timeout):
                        return "powerdown"
                    if fallback is not None and await fallback():
                        return "agent"
        if qmp is not None:
            await qmp.quit()
            if await wait_exit(pid, 5.0):
                return "quit"
    finally:
        if own is not None:
            await own.close()
    _kill(pid)
    if not await wait_exit(pid, 5.0):
        raise OperationFailed(f"VM {spec.name}: QEMU (pid {pid}) survived SIGKILL")
    return "killed"

