"""The cgroup v2 backend on a real cgroup v2 kernel: boot Debian's kernel (linux-image-amd64)
under QEMU with virtme-ng, the host's filesystem shared read-only over 9p, and run
tests/vm/guest_cgroups_v2.py inside the guest, as root, against the guest's own cgroup2
hierarchy. scripts/vm-deps.sh installs what this needs.

Slow (about 1.5 min under TCG on 2 cores), and run in CI: there, missing pieces fail the test
instead of skipping it."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
INNER_TEST = "tests/vm/guest_cgroups_v2.py"  # not test_*: the host (cgroup v1) never collects it
GUEST_MEMORY = "1G"          # the OOM tests allocate 200 MB inside a 64M cgroup
GUEST_CPUS = 2               # the cpuset test moves a child from cpu 0 to cpu 1
TIMEOUT = 270                # stay inside pytest-timeout's 300 s, with time to clean up
EXIT_MARK = "inner-exit-code:"


def _missing(why: str) -> NoReturn:
    msg = f"{why} (run scripts/vm-deps.sh as root)"
    print(f"tests/vm/test_cgroup_v2_guest.py: {msg}", file=sys.stderr)
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the cgroup v2 guest test, but: {msg}", pytrace=False)
    pytest.skip(msg)
    raise AssertionError("unreachable")


def _version_key(path: Path) -> list[object]:
    ver = path.name.removeprefix("vmlinuz-")
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", ver)]


def _guest_kernel() -> Path | None:
    """The newest /boot/vmlinuz-* that is readable and has its modules (9p is a module)."""
    kernels = [k for k in Path("/boot").glob("vmlinuz-*")
               if os.access(k, os.R_OK)
               and Path("/lib/modules", k.name.removeprefix("vmlinuz-")).is_dir()]
    return max(kernels, key=_version_key) if kernels else None


def _kvm_usable() -> bool:
    """KVM only where it is real: /dev/kvm usable, vmx/svm in the cpu flags, and not the
    kvm_pvm stand-in (under which a stock kernel hangs or asserts)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or Path("/sys/module/kvm_pvm").exists():
        return False
    flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    return bool(flags and {"vmx", "svm"} & set(flags.group(1).split()))


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL vng and everything it started (QEMU among them), by PID."""
    for pid in reversed(_descendants(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the session made for it below, by its id
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_cgroup_v2_backend_in_a_qemu_guest() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (the guest runs the cgroup tests as root)")
    venv_bin = REPO / ".venv" / "bin"
    python = venv_bin / "python"
    if not python.exists():
        _missing(f"no virtualenv at {REPO / '.venv'}")
    vng = venv_bin / "vng"
    if not vng.exists():
        _missing(f"virtme-ng is not installed in {REPO / '.venv'}")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        _missing("qemu-system-x86_64 is missing")
    if shutil.which("busybox") is None:
        _missing("busybox is missing (virtme-ng builds its initramfs with it)")
    kernel = _guest_kernel()
    if kernel is None:
        _missing("no /boot/vmlinuz-* with modules in /lib/modules (linux-image-amd64)")
    assert kernel is not None and qemu is not None

    inner = (f"cd {shlex.quote(str(REPO))} && PYTHONDONTWRITEBYTECODE=1 "
             f"{shlex.quote(str(python))} -m pytest -q -rs -p no:cacheprovider -o python_files=guest_*.py {INNER_TEST}; "
             f"echo {EXIT_MARK} $?")
    # The repo (and its .venv) again at its own path: the host's / is shared too, but the
    # guest lays tmpfs over /run, /var/tmp, /var/cache … which would hide a clone there.
    cmd = [str(vng), "--run", str(kernel), "--qemu", qemu, "--user", "root",
           "--memory", GUEST_MEMORY, "--cpus", str(GUEST_CPUS),
           f"--rodir={REPO}={REPO}", "--cwd", str(REPO)]
    if not _kvm_usable():
        print("tests/vm: KVM is not usable here (no vmx/svm, or kvm_pvm): "
              "running the guest under TCG, which is slow", file=sys.stderr)
        cmd.append("--disable-kvm")
    cmd += ["--", inner]
    # vng runs virtme-run from PATH: put the venv's bin first.
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    print("tests/vm:", shlex.join(cmd), file=sys.stderr)

    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        out, _ = proc.communicate(timeout=30)
        print(out)
        pytest.fail(f"the guest did not finish within {TIMEOUT} s (QEMU killed); "
                    f"output above", pytrace=False)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
            proc.wait(timeout=30)
    took = time.monotonic() - started

    print(f"--- guest output ({kernel.name}, {took:.0f} s, vng exit {proc.returncode}) ---")
    print(out)
    print("--- end of guest output ---")
    mark = re.search(rf"^{EXIT_MARK} (\d+)\s*$", out, re.M)
    assert mark is not None, f"the guest never ran pytest to the end (vng exit " \
                             f"{proc.returncode}):\n{out[-4000:]}"
    assert mark.group(1) == "0", f"pytest failed inside the guest:\n{out[-8000:]}"
    summary = re.search(r"^=*\s*(\d+) passed\b.*$", out, re.M)
    assert summary is not None, f"no pytest summary in the guest output:\n{out[-4000:]}"
    assert not re.search(r"\b(skipped|xfailed|xpassed|failed|errors?|deselected)\b",
                         summary.group(0)), f"the inner run was not clean: {summary.group(0)}"
    assert int(summary.group(1)) >= 10
    assert proc.returncode == 0, f"vng exited {proc.returncode}"
