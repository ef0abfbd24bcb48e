"""The checks a VM's backup goes through before anything opens it: the qcow2 header parsed by
ctd (ctd/storage/backup/qcow2.py), qemu-img info's answer, the header's type, the TPM tarball.
The images are made by qemu-img (qemu-utils, installed by setup.sh) and then tampered with."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from ctd.errors import InvalidRequest
from ctd.storage.backup import qcow2
from ctd.storage.backup.format import validate_header
from ctd.storage.backup.qcow2 import check_header, check_info, data_bytes, qcow2_to_raw
from ctd.storage.backup.vmarchive import _extract_tpm

SIZE = 64 << 20


def image(tmp_path: Path, *options: str, size: int = SIZE) -> bytes:
    path = tmp_path / "x.qcow2"
    path.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), str(size)], check=True)
    return path.read_bytes()[:1 << 16]


def refused(head: bytes, words: str, size: int = SIZE) -> None:
    with pytest.raises(InvalidRequest) as err:
        check_header(head, size, "b")
    assert words in err.value.message


def test_a_plain_image_passes_and_the_hostile_ones_are_named(tmp_path: Path) -> None:
    check_header(image(tmp_path), SIZE, "b")
    check_header(image(tmp_path, "-o", "compat=0.10"), SIZE, "b")        # qcow2 version 2
    check_header(image(tmp_path, "-o", "compression_type=zstd"), SIZE, "b")
    refused(image(tmp_path, "-b", "/etc/hostname", "-F", "raw"), "names a backing file")
    data_file = image(tmp_path, "-o", f"data_file={tmp_path / 'd.raw'}")
    refused(data_file, "names an external data file")
    # the same with its incompatible bit cleared: the header extension still names the file
    cleared = bytearray(data_file)
    struct.pack_into(">Q", cleared, 72, struct.unpack_from(">Q", cleared, 72)[0] & ~(1 << 2))
    refused(bytes(cleared), "names an external data file")
    refused(image(tmp_path, size=2 * SIZE), f"is {2 * SIZE} bytes big, not the {SIZE}")
    refused(b"\0" * 4096, "is not a qcow2 image")


@pytest.mark.parametrize(("offset", "fmt", "value", "words"), [
    (4, ">I", 4, "qcow2 version 4"),
    (20, ">I", 30, "impossible cluster size"),
    (32, ">I", 1, "is encrypted"),
    (60, ">I", 2, "internal snapshot"),
    (72, ">Q", 1, "is dirty"),
    (72, ">Q", 2, "is marked corrupt"),
    (72, ">Q", 1 << 9, "feature bit 9"),
    (100, ">I", 1 << 20, "run past its first cluster"),
])
def test_tampered_header_fields(tmp_path: Path, offset: int, fmt: str, value: int, words: str) -> None:
    head = bytearray(image(tmp_path))
    struct.pack_into(fmt, head, offset, value)
    refused(bytes(head), words)


def test_qemu_img_info_must_agree() -> None:
    good = {"format": "qcow2", "virtual-size": SIZE, "format-specific": {"type": "qcow2", "data": {}}}
    check_info(good, SIZE, "b")
    for bad, words in (({"format": "raw"}, "read as 'raw'"),
                       ({"backing-filename": "/dev/sda"}, "backing file"),
                       ({"format-specific": {"data": {"data-file": "/etc/shadow"}}}, "external data file"),
                       ({"encrypted": True}, "encrypted"),
                       ({"dirty-flag": True}, "corrupt or dirty"),
                       ({"virtual-size": SIZE + 512}, "bytes big")):
        with pytest.raises(InvalidRequest) as err:
            check_info({**good, **bad}, SIZE, "b")
        assert words in err.value.message


def test_a_checked_image_becomes_a_sparse_raw_disk_of_its_size(tmp_path: Path) -> None:
    src = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), str(SIZE)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(src)], check=True,
                   capture_output=True)
    qcow2_to_raw(src, tmp_path / "disk.raw", SIZE, "b")
    raw = tmp_path / "disk.raw"
    assert raw.stat().st_size == SIZE and raw.stat().st_blocks * 512 < 8 << 20
    with open(raw, "rb") as fh:
        fh.seek(1 << 20)
        assert fh.read(65536) == b"\x5a" * 65536


def test_backup_header_types() -> None:
    base = {"format": "ctd-backup", "version": 1, "name": "v", "meta": {}}
    assert validate_header({**base, "driver": "tar"})["type"] == "container"
    assert validate_header({**base, "type": "vm", "driver": "qemu"})["member"] == "disk.qcow2"
    for bad, words in (({"type": "vm", "driver": "tar"}, "driver qemu"),
                       ({"type": "vm", "driver": "qemu", "member": "rootfs.tar.zst"}, "member disk.qcow2"),
                       ({"type": "pod", "driver": "tar"}, "type 'pod' is unknown")):
        with pytest.raises(InvalidRequest) as err:
            validate_header({**base, **bad})
        assert words in err.value.message


def tpm_tar(*entries: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for ti in entries:
            tf.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.isreg() else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, size: int = 4, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return ti


def test_tpm_state_takes_plain_files_only(tmp_path: Path) -> None:
    _extract_tpm(tpm_tar(entry("tpm2-00.permall")), tmp_path / "ok", "b")
    assert (tmp_path / "ok" / "tpm2-00.permall").read_bytes() == b"xxxx"
    for i, (bad, words) in enumerate((
            (tpm_tar(entry("tpm2-00.permall", tarfile.SYMTYPE, link="/etc/shadow")), "not a plain file name"),
            (tpm_tar(entry("../escape")), "not a plain file name"),
            (tpm_tar(entry("sub/file")), "not a plain file name"),
            (tpm_tar(entry("dev", tarfile.CHRTYPE)), "not a plain file name"),
            (tpm_tar(entry("a"), entry("a")), "names a file twice"),
            (tpm_tar(*(entry(f"f{n}") for n in range(17))), "at most 16"),
            (b"not a tar" * 100, "not a valid tar"))):
        with pytest.raises(InvalidRequest) as err:
            _extract_tpm(bad, tmp_path / f"bad{i}", "b")
        assert words in err.value.message
    assert not (tmp_path.parent / "escape").exists()


def test_compressed_data_is_counted_as_what_it_unpacks_to(tmp_path: Path) -> None:
    """A compressed image of 8 MiB of one byte is a few KiB; the raw disk gets all 8 MiB."""
    raw, image = tmp_path / "src.raw", tmp_path / "c.qcow2"
    raw.write_bytes(b"\x01" * (8 << 20))
    raw.open("r+b").truncate(SIZE)
    subprocess.run(["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    assert image.stat().st_size < 1 << 20
    out = subprocess.run(["qemu-img", "map", "-f", "qcow2", "--output=json", str(image)], capture_output=True,
                         text=True, check=True).stdout
    assert data_bytes(json.loads(out)) == 8 << 20


def test_data_that_would_not_fit_the_pool_is_refused_before_convert(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    raw, image = tmp_path / "src.raw", tmp_path / "c.qcow2"
    raw.write_bytes(b"\x01" * (8 << 20))
    raw.open("r+b").truncate(SIZE)
    subprocess.run(["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(qcow2.shutil, "disk_usage", lambda _: real._replace(free=4 << 20))
    with pytest.raises(InvalidRequest) as err:
        qcow2_to_raw(image, tmp_path / "disk.raw", SIZE, "b")
    assert "holds 8388608 bytes of data and the pool has 4194304 bytes free" in err.value.message
    assert not (tmp_path / "disk.raw").exists()
