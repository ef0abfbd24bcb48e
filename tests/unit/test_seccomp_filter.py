"""Decisions of the seccomp deny-list filter, checked with the Python cBPF interpreter."""

from __future__ import annotations

import errno

import pytest

from ctd.linux import seccomp
from ctd.linux.seccomp import (
    AUDIT_ARCH_AARCH64,
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    X32_SYSCALL_BIT,
    build_filter,
    evaluate,
)

DENY_EPERM = SECCOMP_RET_ERRNO | errno.EPERM

# x86_64 / i386 numbers of syscalls that must keep working (from the kernel's syscall tables).
X86_64_ALLOWED = {"read": 0, "write": 1, "clone": 56, "ptrace": 101, "mount": 165,
                  "reboot": 169, "getpid": 39, "unshare": 272, "setns": 308,
                  "name_to_handle_at": 303, "kcmp": 312, "clone3": 435, "open_tree": 428,
                  "move_mount": 429, "fsopen": 430, "mount_setattr": 442, "quotactl": 179,
                  "process_vm_readv": 310}
I386_ALLOWED = {"read": 3, "write": 4, "clone": 120, "ptrace": 26, "mount": 21,
                "reboot": 88, "getpid": 20, "fadvise64_64": 272, "mmap2": 192}
X86_64_DENIED = {"kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
                 "finit_module": 313, "delete_module": 176, "open_by_handle_at": 304,
                 "bpf": 321, "perf_event_open": 298, "keyctl": 250, "add_key": 248,
                 "request_key": 249, "userfaultfd": 323, "acct": 163, "swapon": 167,
                 "swapoff": 168, "lookup_dcookie": 212, "iopl": 172, "ioperm": 173,
                 "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
                 "adjtimex": 159, "nfsservctl": 180, "uselib": 134,
                 "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}
I386_DENIED = {"kexec_load": 283, "init_module": 128, "finit_module": 350, "bpf": 357,
               "keyctl": 288, "userfaultfd": 374, "open_by_handle_at": 342, "stime": 25,
               "vm86": 166, "vm86old": 113, "iopl": 110, "clock_settime64": 404,
               "clock_adjtime64": 405, "settimeofday": 79, "acct": 51}
PERSONALITY_X86_64, PERSONALITY_I386 = 135, 136
READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE = 0x0400000, 0x0040000


@pytest.fixture(scope="module")
def x86() -> bytes:
    return build_filter(arch="x86_64")


@pytest.mark.parametrize("name", sorted(X86_64_DENIED))
def test_x86_64_denied(x86: bytes, name: str) -> None:
    nr = X86_64_DENIED[name]
    assert evaluate(x86, nr, AUDIT_ARCH_X86_64) == DENY_EPERM
    assert evaluate(x86, nr | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64) == DENY_EPERM


def test_x32_own_kexec_load_denied(x86: bytes) -> None:
    assert evaluate(x86, 528 | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64) == DENY_EPERM


@pytest.mark.parametrize("name", sorted(X86_64_ALLOWED))
def test_x86_64_allowed(x86: bytes, name: str) -> None:
    nr = X86_64_ALLOWED[name]
    assert evaluate(x86, nr, AUDIT_ARCH_X86_64) == SECCOMP_RET_ALLOW
    assert evaluate(x86, nr | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64) == SECCOMP_RET_ALLOW


@pytest.mark.parametrize("name", sorted(I386_DENIED))
def test_i386_denied(x86: bytes, name: str) -> None:
    assert evaluate(x86, I386_DENIED[name], AUDIT_ARCH_I386) == DENY_EPERM


@pytest.mark.parametrize("name", sorted(I386_ALLOWED))
def test_i386_allowed(x86: bytes, name: str) -> None:
    assert evaluate(x86, I386_ALLOWED[name], AUDIT_ARCH_I386) == SECCOMP_RET_ALLOW


def test_i386_uses_its_own_numbers(x86: bytes) -> None:
    # 250 is keyctl on x86_64 but fadvise64 on i386; 288 is keyctl on i386 only.
    assert evaluate(x86, 250, AUDIT_ARCH_I386) == SECCOMP_RET_ALLOW
    assert evaluate(x86, 288, AUDIT_ARCH_X86_64) == SECCOMP_RET_ALLOW


@pytest.mark.parametrize("value", [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF])
@pytest.mark.parametrize("arch,nr", [(AUDIT_ARCH_X86_64, PERSONALITY_X86_64),
                                     (AUDIT_ARCH_I386, PERSONALITY_I386)])
def test_personality_plain_values_allowed(x86: bytes, arch: int, nr: int, value: int) -> None:
    assert evaluate(x86, nr, arch, (value,)) == SECCOMP_RET_ALLOW


@pytest.mark.parametrize("value", [READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, 0x1, 0x0400008])
@pytest.mark.parametrize("arch,nr", [(AUDIT_ARCH_X86_64, PERSONALITY_X86_64),
                                     (AUDIT_ARCH_I386, PERSONALITY_I386)])
def test_personality_flags_denied(x86: bytes, arch: int, nr: int, value: int) -> None:
    assert evaluate(x86, nr, arch, (value,)) == DENY_EPERM


def test_personality_ignores_high_half(x86: bytes) -> None:
    # The kernel takes an unsigned int, so only the low 32 bits decide.
    assert evaluate(x86, PERSONALITY_X86_64, AUDIT_ARCH_X86_64, (1 << 32,)) == SECCOMP_RET_ALLOW
    hi_rie = (1 << 32) | READ_IMPLIES_EXEC
    assert evaluate(x86, PERSONALITY_X86_64, AUDIT_ARCH_X86_64, (hi_rie,)) == DENY_EPERM


@pytest.mark.parametrize("arch", [AUDIT_ARCH_AARCH64, 0x40000028, 0, 0xFFFFFFFF])
def test_unknown_arch_killed(x86: bytes, arch: int) -> None:
    assert evaluate(x86, 0, arch) == SECCOMP_RET_KILL_PROCESS


def test_aarch64_filter() -> None:
    f = build_filter(arch="aarch64")
    assert evaluate(f, 280, AUDIT_ARCH_AARCH64) == DENY_EPERM  # bpf
    assert evaluate(f, 219, AUDIT_ARCH_AARCH64) == DENY_EPERM  # keyctl
    assert evaluate(f, 40, AUDIT_ARCH_AARCH64) == SECCOMP_RET_ALLOW  # mount
    assert evaluate(f, 142, AUDIT_ARCH_AARCH64) == SECCOMP_RET_ALLOW  # reboot
    assert evaluate(f, 92, AUDIT_ARCH_AARCH64, (READ_IMPLIES_EXEC,)) == DENY_EPERM
    assert evaluate(f, 92, AUDIT_ARCH_AARCH64, (0,)) == SECCOMP_RET_ALLOW
    assert evaluate(f, 0, AUDIT_ARCH_X86_64) == SECCOMP_RET_KILL_PROCESS
    assert evaluate(f, 0x40000028, 0x40000028) == SECCOMP_RET_KILL_PROCESS  # arm32 compat


def test_custom_deny_and_errno() -> None:
    f = build_filter(["keyctl", "vm86"], errno=errno.ENOSYS, arch="x86_64")
    assert evaluate(f, 250, AUDIT_ARCH_X86_64) == SECCOMP_RET_ERRNO | errno.ENOSYS
    assert evaluate(f, 321, AUDIT_ARCH_X86_64) == SECCOMP_RET_ALLOW  # bpf not listed
    assert evaluate(f, 135, AUDIT_ARCH_X86_64, (READ_IMPLIES_EXEC,)) == SECCOMP_RET_ALLOW
    assert evaluate(f, 166, AUDIT_ARCH_I386) == SECCOMP_RET_ERRNO | errno.ENOSYS  # i386 only


def test_unknown_name_and_bad_errno_rejected() -> None:
    with pytest.raises(ValueError, match="kexec_lod"):
        build_filter(["kexec_lod"], arch="x86_64")
    with pytest.raises(ValueError):
        build_filter(errno=0, arch="x86_64")
    with pytest.raises(ValueError):
        build_filter(errno=5000, arch="x86_64")
    with pytest.raises(ValueError, match="riscv64"):
        build_filter(arch="riscv64")


def test_native_filter_is_well_formed() -> None:
    f = build_filter()
    assert len(f) % 8 == 0 and 0 < len(f) // 8 <= seccomp.BPF_MAXINSNS
    assert build_filter(arch="amd64") == build_filter(arch="x86_64")


@pytest.mark.parametrize("machine,audit,table", [
    ("x86_64", AUDIT_ARCH_X86_64, seccomp._X86_64), ("x86_64", AUDIT_ARCH_I386, seccomp._I386),
    ("aarch64", AUDIT_ARCH_AARCH64, seccomp._AARCH64)])
def test_every_table_entry_denied(machine: str, audit: int, table: dict[str, int]) -> None:
    f = build_filter(arch=machine)
    for name, nr in table.items():
        if name != "personality":
            assert evaluate(f, nr, audit) == DENY_EPERM, name
