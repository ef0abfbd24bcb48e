"""cgroup v2 has no devices.allow: a BPF_PROG_TYPE_CGROUP_DEVICE program attached to the
group decides each open and mknod of a device node (Documentation/admin-guide/cgroup-v2.rst,
"Device controller"). This module assembles that program from an allow-list and loads and
attaches it with the bpf() syscall; no compiler, no library.

The program sees struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }, where
access_type is (access << 16) | type, and returns 1 to allow, 0 to refuse (EPERM).
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .model import DeviceRule, DeviceType

# linux/bpf.h
BPF_PROG_LOAD: Final = 5
BPF_PROG_ATTACH: Final = 8
BPF_PROG_TYPE_CGROUP_DEVICE: Final = 15
BPF_CGROUP_DEVICE: Final = 6
BPF_F_ALLOW_MULTI: Final = 2   # ancestors' programs keep running too: all of them must allow

BPF_DEVCG_DEV_BLOCK: Final = 1
BPF_DEVCG_DEV_CHAR: Final = 2
BPF_DEVCG_ACC_MKNOD: Final = 1
BPF_DEVCG_ACC_READ: Final = 2
BPF_DEVCG_ACC_WRITE: Final = 4
_ACCESS_BITS: Final = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_TYPE: Final = {DeviceType.BLOCK: BPF_DEVCG_DEV_BLOCK, DeviceType.CHAR: BPF_DEVCG_DEV_CHAR}

# Opcodes (linux/bpf_common.h, linux/bpf.h): class | op | source.
_LDX_MEM_W: Final = 0x61     # BPF_LDX | BPF_MEM | BPF_W
_ALU64_AND_K: Final = 0x57
_ALU64_RSH_K: Final = 0x77
_ALU64_MOV_K: Final = 0xB7
_ALU64_MOV_X: Final = 0xBF
_JMP_JNE_K: Final = 0x55
_JMP_EXIT: Final = 0x95

_R0, _R1, _R2, _R3, _R4, _R5 = range(6)

_NR_BPF: Final = {"x86_64": 321, "aarch64": 280}


@dataclass(frozen=True)
class Insn:
    """struct bpf_insn: 8 bytes, registers in one byte (dst low nibble, src high)."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def pack(self) -> bytes:
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)


def _rule_block(rule: DeviceRule) -> list[Insn]:
    """Instructions that return 1 when the request matches `rule`; each refusal jumps to the
    end of the block (its offset is patched in once the block's length is known)."""
    checks: list[Insn] = []
    if rule.type is not DeviceType.ALL:
        checks.append(Insn(_JMP_JNE_K, _R2, imm=_TYPE[rule.type]))
    denied = 7 & ~sum(_ACCESS_BITS[c] for c in rule.access)
    if denied:  # the request asks for an access the rule does not give
        checks += [Insn(_ALU64_MOV_X, _R1, _R3), Insn(_ALU64_AND_K, _R1, imm=denied),
                   Insn(_JMP_JNE_K, _R1, imm=0)]
    if rule.major is not None:
        checks.append(Insn(_JMP_JNE_K, _R4, imm=rule.major))
    if rule.minor is not None:
        checks.append(Insn(_JMP_JNE_K, _R5, imm=rule.minor))
    block = checks + [Insn(_ALU64_MOV_K, _R0, imm=1), Insn(_JMP_EXIT)]
    # A jump's offset counts from the next instruction: to len(block) is past the block.
    return [Insn(i.code, i.dst, i.src, len(block) - n - 1, i.imm) if i.code == _JMP_JNE_K else i
            for n, i in enumerate(block)]


def assemble(allow: Sequence[DeviceRule]) -> list[Insn]:
    """The program: load type, access, major, minor; try each rule; else return 0."""
    prog = [
        Insn(_LDX_MEM_W, _R2, _R1, 0),        # r2 = access_type
        Insn(_ALU64_AND_K, _R2, imm=0xFFFF),  # r2 = type
        Insn(_LDX_MEM_W, _R3, _R1, 0),
        Insn(_ALU64_RSH_K, _R3, imm=16),      # r3 = access
        Insn(_LDX_MEM_W, _R4, _R1, 4),        # r4 = major
        Insn(_LDX_MEM_W, _R5, _R1, 8),        # r5 = minor
    ]
    for rule in allow:
        prog += _rule_block(rule)
    return prog + [Insn(_ALU64_MOV_K, _R0, imm=0), Insn(_JMP_EXIT)]


def run(prog: Sequence[Insn], dev_type: int, access: int, major: int, minor: int) -> int:
    """Interpret the program as the kernel would (the few opcodes assemble() emits), so the
    allow-list logic is testable without root or a cgroup v2 kernel."""
    regs = [0] * 11
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    pc = 0
    while True:
        i = prog[pc]
        pc += 1
        if i.code == _LDX_MEM_W:
            assert i.src == _R1
            regs[i.dst] = struct.unpack_from("<I", ctx, i.off)[0]
        elif i.code == _ALU64_AND_K:
            regs[i.dst] &= i.imm & 0xFFFFFFFFFFFFFFFF
        elif i.code == _ALU64_RSH_K:
            regs[i.dst] >>= i.imm
        elif i.code == _ALU64_MOV_K:
            regs[i.dst] = i.imm
        elif i.code == _ALU64_MOV_X:
            regs[i.dst] = regs[i.src]
        elif i.code == _JMP_JNE_K:
            if regs[i.dst] != i.imm:
                pc += i.off
        elif i.code == _JMP_EXIT:
            return regs[_R0]
        else:
            raise ValueError(f"opcode {i.code:#x} at {pc - 1}")


# -- the syscall -----------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32)]


class _ProgAttachAttr(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("replace_bpf_fd", ctypes.c_uint32)]


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(38, f"{what}: no bpf() syscall number for {platform.machine()}")
    result = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr),
                           ctypes.c_uint(ctypes.sizeof(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return int(result)


def load(prog: Sequence[Insn]) -> int:
    """BPF_PROG_LOAD: the program's fd; OSError with the verifier's log on a refusal."""
    code = b"".join(i.pack() for i in prog)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = _ProgLoadAttr(prog_type=BPF_PROG_TYPE_CGROUP_DEVICE, insn_cnt=len(prog),
                         insns=ctypes.addressof(insns), license=ctypes.addressof(license_),
                         log_level=1, log_size=len(log), log_buf=ctypes.addressof(log),
                         prog_name=b"ctd_devices", expected_attach_type=BPF_CGROUP_DEVICE)
    try:
        return _bpf(BPF_PROG_LOAD, attr, "BPF_PROG_LOAD (device program)")
    except OSError as exc:
        text = log.value.decode(errors="replace").strip()
        if text:
            raise OSError(exc.errno, f"{exc.strerror}; verifier: {text[-500:]}") from None
        raise


def attach(cgroup_dir: str, allow: Sequence[DeviceRule]) -> None:
    """Load the allow-list's program and attach it to the cgroup2 directory. The attachment
    holds the program: it goes when the cgroup is removed."""
    prog_fd = load(assemble(allow))
    try:
        dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = _ProgAttachAttr(target_fd=dir_fd, attach_bpf_fd=prog_fd,
                                   attach_type=BPF_CGROUP_DEVICE, attach_flags=BPF_F_ALLOW_MULTI)
            _bpf(BPF_PROG_ATTACH, attr, f"BPF_PROG_ATTACH to {cgroup_dir}")
        finally:
            os.close(dir_fd)
    finally:
        os.close(prog_fd)
