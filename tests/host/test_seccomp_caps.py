"""Seccomp filter and bounding set on the real kernel (root, x86_64).

Each check runs in a forked child that first unshares a user namespace (the parent
writes its id maps), so it holds CAP_SYS_ADMIN only there, like a container. The child
reports a JSON dict over a pipe and always leaves with os._exit.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import struct
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from ctd.linux import capabilities, seccomp

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64"),
]

CLONE_NEWUSER, CLONE_NEWUTS = 0x10000000, 0x04000000
NR_GETPID, NR_KEYCTL, NR_BPF, NR_USERFAULTFD, NR_OPEN_BY_HANDLE_AT = 39, 250, 321, 323, 304
NR_PERSONALITY = 135
I386_GETPID, I386_KEYCTL = 20, 288
KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING = 0, -3
READ_IMPLIES_EXEC = 0x0400000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _sys(nr: int, *args: int) -> tuple[int, int]:
    """(return value, errno) of a raw syscall."""
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return ret, ctypes.get_errno() if ret == -1 else 0


def _run_in_child(body: Callable[[], dict[str, Any]], userns: bool = True) -> dict[str, Any]:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(ready_r), os.close(go_w), os.close(res_r)
            if userns and _libc.unshare(CLONE_NEWUSER) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
            os.write(ready_w, b"1")
            os.read(go_r, 1)  # wait for the id maps
            out = body()
        except BaseException:
            out, code = {"error": traceback.format_exc()}, 1
        try:
            os.write(res_w, json.dumps(out).encode())
        finally:
            os._exit(code)
    os.close(ready_w), os.close(go_r), os.close(res_w)
    try:
        assert os.read(ready_r, 1) == b"1", "child failed before unsharing"
        if userns:
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write("0 100000 65536\n")
        os.write(go_w, b"1")
        chunks = []
        while chunk := os.read(res_r, 65536):
            chunks.append(chunk)
    finally:
        os.waitpid(pid, 0)
        for fd in (ready_r, go_w, res_r):
            os.close(fd)
    out = json.loads(b"".join(chunks) or b'{"error": "no report"}')
    assert "error" not in out, out["error"]
    return out


def _int80(nr: int, ebx: int = 0, ecx: int = 0, edx: int = 0) -> int:
    """A 32-bit `int 0x80` syscall from this 64-bit process; returns eax (-errno on error)."""
    code = (b"\x53"  # push rbx (callee-saved)
            + b"\xb8" + struct.pack("<i", nr) + b"\xbb" + struct.pack("<i", ebx)
            + b"\xb9" + struct.pack("<i", ecx) + b"\xba" + struct.pack("<i", edx)
            + b"\xcd\x80"  # int 0x80
            + b"\x5b\xc3")  # pop rbx; ret
    mem = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    mem.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    return ctypes.CFUNCTYPE(ctypes.c_int)(addr)()


def _ia32_works() -> bool:
    pid = os.fork()
    if pid == 0:
        os._exit(0 if _int80(I386_GETPID) == os.getpid() else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_install_denies_in_userns() -> None:
    def body() -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["keyctl_before"] = _sys(NR_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
        seccomp.install()
        out["keyctl"] = _sys(NR_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
        out["bpf"] = _sys(NR_BPF, 0, 0, 0)
        out["userfaultfd"] = _sys(NR_USERFAULTFD, 0)
        out["open_by_handle_at"] = _sys(NR_OPEN_BY_HANDLE_AT, -1, 0, 0)
        out["getpid"] = [_sys(NR_GETPID)[0], os.getpid()]
        out["pers_query"] = _sys(NR_PERSONALITY, 0xFFFFFFFF)
        out["pers_rie"] = _sys(NR_PERSONALITY, READ_IMPLIES_EXEC)
        out["unshare_uts"] = _libc.unshare(CLONE_NEWUTS)  # nested namespaces stay allowed
        with open("/proc/self/status") as f:
            out["seccomp_mode"] = next(ln.split()[1] for ln in f if ln.startswith("Seccomp:"))
        return out

    out = _run_in_child(body)
    assert out["keyctl_before"][0] > 0, "keyctl should work before the filter"
    for call in ("keyctl", "bpf", "userfaultfd", "open_by_handle_at", "pers_rie"):
        assert out[call] == [-1, errno.EPERM], call
    assert out["getpid"][0] == out["getpid"][1] > 0
    assert out["pers_query"][0] >= 0
    assert out["unshare_uts"] == 0
    assert out["seccomp_mode"] == "2"


def test_errno_comes_from_filter() -> None:
    # EDOM is nothing these syscalls return themselves, so it proves the filter answered.
    def body() -> dict[str, Any]:
        seccomp.install(errno=errno.EDOM)
        return {"keyctl": _sys(NR_KEYCTL, 0, KEY_SPEC_SESSION_KEYRING, 0),
                "bpf": _sys(NR_BPF, 0, 0, 0), "userfaultfd": _sys(NR_USERFAULTFD, 0),
                "open_by_handle_at": _sys(NR_OPEN_BY_HANDLE_AT, -1, 0, 0)}

    for call, res in _run_in_child(body).items():
        assert res == [-1, errno.EDOM], call


def test_int80_uses_i386_numbers() -> None:
    if not _ia32_works():
        pytest.skip("no ia32 emulation in this kernel")

    def body() -> dict[str, Any]:
        seccomp.install()
        return {"keyctl": _int80(I386_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING),
                "getpid": [_int80(I386_GETPID), os.getpid()]}

    out = _run_in_child(body)
    assert out["keyctl"] == -errno.EPERM
    assert out["getpid"][0] == out["getpid"][1]


def test_install_without_cap_sys_admin_fails() -> None:
    def body() -> dict[str, Any]:
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)  # loses every capability, no no_new_privs
        try:
            seccomp.install()
        except OSError as e:
            return {"errno": e.errno}
        return {"errno": 0}

    assert _run_in_child(body, userns=False)["errno"] == errno.EACCES


def test_drop_bounding_in_userns() -> None:
    def body() -> dict[str, Any]:
        before = sorted(capabilities.bounding_set())
        capabilities.drop_bounding()
        with open("/proc/self/status") as f:
            amb = next(ln.split()[1] for ln in f if ln.startswith("CapAmb:"))
        return {"before": before, "after": sorted(capabilities.bounding_set()), "amb": amb}

    out = _run_in_child(body)
    assert "sys_module" in out["before"]
    after = set(out["after"])
    assert not after & set(capabilities.DEFAULT_DROP)
    assert {"sys_admin", "sys_nice", "sys_boot", "setpcap"} <= after
    assert set(out["before"]) - after <= set(capabilities.DEFAULT_DROP)
    assert int(out["amb"], 16) == 0


def test_drop_bounding_rejects_unknown_name() -> None:
    def body() -> dict[str, Any]:
        try:
            capabilities.drop_bounding(["sys_admin", "sys_modul"])
        except ValueError as e:
            return {"error_text": str(e), "caps": sorted(capabilities.bounding_set())}
        return {"error_text": "", "caps": []}

    out = _run_in_child(body)
    assert "sys_modul" in out["error_text"]
    assert "sys_admin" in out["caps"]  # validated before dropping anything
