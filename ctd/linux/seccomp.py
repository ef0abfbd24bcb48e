"""A hand-written classic-BPF seccomp deny-list for system containers.

The filter allows every syscall except a short deny-list in the spirit of Docker's
default profile and LXC's: interfaces that reach host-global state (kernel modules,
kexec, the clock, swap, accounting, raw I/O ports, the kernel keyring, eBPF, perf,
userfaultfd, file handles). Everything a VPS needs (mount, unshare/setns, ptrace,
reboot, the new mount API, process_vm_*) stays allowed: the kernel's user-namespace
checks already confine those.

Deliberate choices:

* No no_new_privs: sudo, passwd and ping inside a system container must keep working.
  The kernel accepts a filter without it because the caller holds CAP_SYS_ADMIN in its
  own user namespace.
* ``adjtimex``/``clock_adjtime`` are denied whole. Allowing only read-only calls
  (``timex.modes == 0``) would need to read user memory, which cBPF cannot do. Cost:
  read-only queries (``timedatectl``'s "synchronized" flag, ``ntptime``) fail with the
  deny errno inside containers.
* ``personality`` is allowed only for the plain PER_LINUX values Docker allows (0x0,
  PER_LINUX32 0x8, UNAME26 0x20000, 0x20008, query 0xffffffff); flags such as
  READ_IMPLIES_EXEC or ADDR_NO_RANDOMIZE are denied. Only the low 32 bits of the argument
  are compared because the kernel takes an ``unsigned int`` and ignores the rest.
* x86_64: the x32 bit (0x40000000) is masked off the syscall number before comparing, so
  x32 variants are denied too (x32's own kexec_load, 528, is listed as well). 32-bit
  ``int 0x80`` calls (AUDIT_ARCH_I386) are checked against the i386 numbers.
* Any other ABI (for example 32-bit ARM compat tasks on aarch64) is killed with
  SECCOMP_RET_KILL_PROCESS: we have no table for it, allowing would bypass the filter,
  and denying every call with an errno leaves a process that cannot even exit cleanly.
* io_uring (``io_uring_setup``, ``io_uring_enter``, ``io_uring_register``) is denied by
  default with EPERM, as Docker (since v25), containerd and ChromeOS do: its requests run in
  kernel worker threads beside the syscall paths seccomp and LSMs see, and it has been the
  source of a long run of privilege escalations. A container may be allowed it
  (``IO_URING``, left out of its spec's deny list); ``ALWAYS_DENY`` can never be lifted.

``install()`` filters the calling thread only (and everything it forks or execs): call it
in the single-threaded spawned child right before exec.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import functools
import os
import platform
import struct
import sys
from collections.abc import Callable, Iterable, Sequence

# Denied syscall names. Names absent on an architecture are skipped there.
ALWAYS_DENY: tuple[str, ...] = (
    "kexec_load", "kexec_file_load",  # replace the host kernel
    "init_module", "finit_module", "delete_module",  # load/unload host kernel code
    "open_by_handle_at",  # opens any inode by handle, escaping mount/chroot confinement
    "bpf",  # eBPF: large kernel attack surface, host-wide tracing
    "perf_event_open",  # host-wide profiling, side channels, frequent CVEs
    "keyctl", "add_key", "request_key",  # kernel keyring is not namespaced
    "userfaultfd",  # used to widen kernel race windows in exploits
    "acct",  # process accounting writes host-global records
    "swapon", "swapoff",  # host-global swap configuration
    "lookup_dcookie",  # profiling interface (oprofile), leaks host paths
    "iopl", "ioperm",  # raw x86 I/O port access
    "settimeofday", "stime", "clock_settime", "clock_settime64",  # host clock
    "adjtimex", "clock_adjtime", "clock_adjtime64",  # host clock discipline (see above)
    "nfsservctl",  # obsolete kernel nfsd interface
    "vm86", "vm86old",  # legacy real-mode emulation, history of kernel bugs
    "uselib",  # obsolete a.out loader path
    "personality",  # denied except the plain PER_LINUX values (see PERSONALITY_ALLOWED)
)
IO_URING: tuple[str, ...] = ("io_uring_setup", "io_uring_enter", "io_uring_register")
# What a container gets unless it is allowed io_uring.
DEFAULT_DENY: tuple[str, ...] = ALWAYS_DENY + IO_URING

PERSONALITY_ALLOWED: tuple[int, ...] = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# Syscall numbers, only for the names above (plus personality). Sources: the kernel's
# arch/x86/entry/syscalls/syscall_{64,32}.tbl and include/uapi/asm-generic/unistd.h.
_X86_64: dict[str, int] = {
    "uselib": 134, "personality": 135, "adjtimex": 159, "acct": 163, "settimeofday": 164,
    "swapon": 167, "swapoff": 168, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "nfsservctl": 180, "lookup_dcookie": 212, "clock_settime": 227,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "perf_event_open": 298, "open_by_handle_at": 304, "clock_adjtime": 305,
    "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
}
# x32-only numbers (compared after masking the x32 bit) for names whose x32 entry differs.
_X32_EXTRA: dict[str, int] = {"kexec_load": 528}
_I386: dict[str, int] = {
    "stime": 25, "acct": 51, "settimeofday": 79, "uselib": 86, "swapon": 87,
    "ioperm": 101, "iopl": 110, "vm86old": 113, "swapoff": 115, "adjtimex": 124,
    "init_module": 128, "delete_module": 129, "personality": 136, "vm86": 166,
    "nfsservctl": 169, "lookup_dcookie": 253, "clock_settime": 264, "kexec_load": 283,
    "add_key": 286, "request_key": 287, "keyctl": 288, "perf_event_open": 336,
    "open_by_handle_at": 342, "clock_adjtime": 343, "finit_module": 350, "bpf": 357,
    "userfaultfd": 374, "clock_settime64": 404, "clock_adjtime64": 405,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
}
_AARCH64: dict[str, int] = {
    "lookup_dcookie": 18, "nfsservctl": 42, "acct": 89, "personality": 92,
    "kexec_load": 104, "init_module": 105, "delete_module": 106, "clock_settime": 112,
    "settimeofday": 170, "adjtimex": 171, "add_key": 217, "request_key": 218,
    "keyctl": 219, "swapon": 224, "swapoff": 225, "perf_event_open": 241,
    "open_by_handle_at": 265, "clock_adjtime": 266, "finit_module": 273, "bpf": 280,
    "userfaultfd": 282, "kexec_file_load": 294,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
}
_KNOWN_NAMES = frozenset(_X86_64) | frozenset(_I386) | frozenset(_AARCH64)

# linux/audit.h
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# linux/seccomp.h
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF
SECCOMP_MODE_FILTER = 2
PR_SET_SECCOMP = 22
BPF_MAXINSNS = 4096

# linux/filter.h opcodes used here.
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W, BPF_ABS, BPF_K = 0x00, 0x20, 0x00
BPF_AND, BPF_JA, BPF_JEQ = 0x50, 0x00, 0x10

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_OFF_NR, _OFF_ARCH, _OFF_ARGS = 0, 4, 16
# cBPF loads 32-bit words; the low half of a native u64 depends on byte order.
_LO = 0 if sys.byteorder == "little" else 4
_INSN = struct.Struct("=HBBI")  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k;}

# machine -> [(audit arch, numbers, x32 masking and extras?)]; the native arch comes first.
_ARCHES: dict[str, list[tuple[int, dict[str, int], bool]]] = {
    "x86_64": [(AUDIT_ARCH_X86_64, _X86_64, True), (AUDIT_ARCH_I386, _I386, False)],
    "i386": [(AUDIT_ARCH_I386, _I386, False)],
    "aarch64": [(AUDIT_ARCH_AARCH64, _AARCH64, False)],
}
_ALIASES = {"amd64": "x86_64", "i686": "i386", "i586": "i386", "x86": "i386", "arm64": "aarch64"}

_Insn = tuple[int, int, int, int]


def _stmt(code: int, k: int) -> _Insn:
    return (code, 0, 0, k & 0xFFFFFFFF)


def _jeq(k: int, jt: int, jf: int) -> _Insn:
    return (BPF_JMP | BPF_JEQ | BPF_K, jt, jf, k & 0xFFFFFFFF)


def _arch_block(numbers: dict[str, int], x32: bool, deny: Sequence[str],
                ret_deny: int) -> list[_Insn]:
    """Instructions for one ABI; every path ends in a RET."""
    ld_nr = _stmt(BPF_LD | BPF_W | BPF_ABS, _OFF_NR)
    out: list[_Insn] = [ld_nr]
    if x32:
        out.append(_stmt(BPF_ALU | BPF_AND | BPF_K, ~X32_SYSCALL_BIT))
    nrs: list[int] = []
    for name in deny:
        for table in (numbers, _X32_EXTRA if x32 else {}):
            if name in table and name != "personality" and table[name] not in nrs:
                nrs.append(table[name])
    # One "jeq nr; ret deny" pair per number: short forward jumps only, so the block
    # never hits cBPF's 8-bit conditional jump limit however long the list gets.
    for nr in nrs:
        out += [_jeq(nr, 0, 1), _stmt(BPF_RET | BPF_K, ret_deny)]
    if "personality" in deny and "personality" in numbers:
        n = len(PERSONALITY_ALLOWED)
        out.append(_jeq(numbers["personality"], 0, n + 2))  # miss: skip to ALLOW
        out.append(_stmt(BPF_LD | BPF_W | BPF_ABS, _OFF_ARGS + _LO))
        out += [_jeq(v, n - i, 0) for i, v in enumerate(PERSONALITY_ALLOWED)]
        out.append(_stmt(BPF_RET | BPF_K, ret_deny))
    out.append(_stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW))
    return out


def build_filter(deny: Iterable[str] = DEFAULT_DENY, errno: int = _errno.EPERM,
                 arch: str | None = None) -> bytes:
    """The packed ``struct sock_filter`` array for ``arch`` (default: this machine).

    Raises ValueError for a name no table knows (a typo), a bad errno or an
    unsupported architecture.
    """
    deny = list(dict.fromkeys(deny))
    unknown = [n for n in deny if n not in _KNOWN_NAMES]
    if unknown:
        raise ValueError(f"unknown syscall name(s) in seccomp deny list: {', '.join(unknown)}")
    if not 0 < errno <= 4095:  # the kernel caps SECCOMP_RET_ERRNO data at MAX_ERRNO
        raise ValueError(f"errno out of range: {errno}")
    machine = (arch or platform.machine()).lower()
    machine = _ALIASES.get(machine, machine)
    if machine not in _ARCHES:
        raise ValueError(f"no seccomp syscall table for architecture {machine!r}")
    ret_deny = SECCOMP_RET_ERRNO | errno
    prog: list[_Insn] = [_stmt(BPF_LD | BPF_W | BPF_ABS, _OFF_ARCH)]
    for audit_arch, numbers, x32 in _ARCHES[machine]:
        block = _arch_block(numbers, x32, deny, ret_deny)
        # jeq falls through to an unconditional JA (32-bit offset) over the block on mismatch.
        prog += [_jeq(audit_arch, 1, 0), _stmt(BPF_JMP | BPF_JA, len(block))] + block
    prog.append(_stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS))
    if len(prog) > BPF_MAXINSNS:
        raise ValueError(f"seccomp filter too long: {len(prog)} instructions")
    return b"".join(_INSN.pack(*insn) for insn in prog)


def evaluate(filter: bytes, nr: int, arch: int, args: Sequence[int] = (0,) * 6,
             instruction_pointer: int = 0) -> int:
    """Run a cBPF seccomp filter in Python and return its SECCOMP_RET_* value.

    Implements the instructions ``build_filter`` emits plus a few common neighbours;
    anything else raises ValueError. For tests: no kernel involved.
    """
    if len(args) > 6:
        raise ValueError("seccomp_data has 6 arguments")
    full = [a & 0xFFFFFFFFFFFFFFFF for a in args] + [0] * (6 - len(args))
    data = struct.pack("=iIQ6Q", nr if nr < 2**31 else nr - 2**32, arch & 0xFFFFFFFF,
                       instruction_pointer, *full)
    insns: list[tuple[int, int, int, int]] = [_INSN.unpack_from(filter, off)
                                              for off in range(0, len(filter), _INSN.size)]
    a = 0
    pc = 0
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == BPF_LD | BPF_W | BPF_ABS:
            if k % 4 or k + 4 > len(data):
                raise ValueError(f"misaligned or out-of-range load at offset {k}")
            a = struct.unpack_from("=I", data, k)[0]
        elif code == BPF_ALU | BPF_AND | BPF_K:
            a &= k
        elif code == BPF_JMP | BPF_JA:
            pc += k
        elif code == BPF_JMP | BPF_JEQ | BPF_K:
            pc += jt if a == k else jf
        elif code == BPF_JMP | 0x20 | BPF_K:  # JGT
            pc += jt if a > k else jf
        elif code == BPF_JMP | 0x30 | BPF_K:  # JGE
            pc += jt if a >= k else jf
        elif code == BPF_JMP | 0x40 | BPF_K:  # JSET
            pc += jt if a & k else jf
        elif code == BPF_RET | BPF_K:
            return k
        elif code == BPF_RET | 0x10:  # RET A
            return a
        else:
            raise ValueError(f"unsupported cBPF opcode {code:#x} at {pc - 1}")
    raise ValueError("filter fell off its end without RET")


@functools.lru_cache(maxsize=8)  # the spawner warms it: children then install without building
def _cached_filter(deny: tuple[str, ...], errno: int) -> bytes:
    return build_filter(deny, errno)


@functools.cache
def _prctl() -> Callable[..., int]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


def warm(deny: Iterable[str] = DEFAULT_DENY, errno: int = _errno.EPERM) -> None:
    """Do once, in a process that forks containers, what install() would do in each child."""
    _cached_filter(tuple(deny), errno)
    _prctl()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(deny: Iterable[str] = DEFAULT_DENY, errno: int = _errno.EPERM) -> None:
    """Install the deny-list filter on the calling thread; OSError on failure.

    Needs CAP_SYS_ADMIN in the caller's user namespace (no no_new_privs on purpose).
    """
    prog = _cached_filter(tuple(deny), errno)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // _INSN.size, ctypes.cast(buf, ctypes.c_void_p))
    if _prctl()(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
