"""extract_vmlinux: the ELF payload of a bzImage, whatever the compressor, cached."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
from pathlib import Path

import pytest
import zstandard

from ctd.errors import InvalidRequest, NotFound
from ctd.instance.vm.kernel import decompress_vmlinux, extract_vmlinux

ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
SETUP = b"MZ" + b"\x90" * 1000 + b"HdrS" + b"\0" * 500
TRAILER = b"\x00\x10\x00\x00" + b"\xcc" * 64   # what follows the payload in a real bzImage


def bzimage(payload: bytes) -> bytes:
    return SETUP + payload + TRAILER


@pytest.mark.parametrize("compress", [
    lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    lambda d: gzip.compress(d),
    lambda d: zstandard.ZstdCompressor().compress(d),
    lambda d: bz2.compress(d),
    # the kernel's `lzma -9`: 64 MiB dictionary, header 5d 00 00 00 04
    lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE, filters=[{"id": lzma.FILTER_LZMA1, "preset": 9}]),
], ids=["xz", "gzip", "zstd", "bzip2", "lzma"])
def test_every_kernel_compressor(compress) -> None:  # type: ignore[no-untyped-def]
    assert decompress_vmlinux(bzimage(compress(ELF))) == ELF


def test_a_false_magic_before_the_payload_is_skipped() -> None:
    fake = b"\x1f\x8b\x08garbage that is no gzip stream"
    assert decompress_vmlinux(bzimage(fake + gzip.compress(ELF))) == ELF


def test_payload_that_is_not_elf_is_refused() -> None:
    assert decompress_vmlinux(bzimage(gzip.compress(b"not an elf" * 100))) is None
    assert decompress_vmlinux(ELF) == ELF   # already a vmlinux


def test_extract_caches(tmp_path: Path) -> None:
    src = tmp_path / "vmlinuz"
    src.write_bytes(bzimage(lzma.compress(ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)))
    out = extract_vmlinux(src, tmp_path / "cache")
    assert out.read_bytes() == ELF and out.parent == tmp_path / "cache"
    os.utime(out, (1, 1))
    assert extract_vmlinux(src, tmp_path / "cache") == out and out.stat().st_mtime == 1   # reused
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [out.name]              # no temp left
    src.write_bytes(bzimage(gzip.compress(ELF + b"new")))
    assert extract_vmlinux(src, tmp_path / "cache") != out                            # new kernel, new file


def test_extract_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        extract_vmlinux(tmp_path / "missing", tmp_path)
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk" * 100)
    with pytest.raises(InvalidRequest, match="no vmlinux"):
        extract_vmlinux(junk, tmp_path)
