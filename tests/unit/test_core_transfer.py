"""Transfers.check_restore: what a backup file's header may decide and what only the request may."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ctd.errors import InvalidRequest
from ctd.instance.transfer import Transfers


class FakeInstances:
    storage = db = None
    host_cpus = [0, 1]

    def __init__(self) -> None:
        self.reserved: list[str] = []

    def reserve(self, name: str, instance_id: int | None, hint: str) -> int:
        self.reserved.append(name)
        return 100


def backup_file(tmp_path: Path, meta: dict[str, Any]) -> str:
    header = {"format": "ctd-backup", "version": 1, "driver": "tar", "member": "rootfs.tar.zst",
              "name": "web", "meta": meta}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        body = json.dumps(header).encode()
        ti = tarfile.TarInfo("ctd-backup.json")
        ti.size = len(body)
        tf.addfile(ti, io.BytesIO(body))
    path = tmp_path / "web.backup"
    path.write_bytes(raw.getvalue())
    return str(path)


def test_a_header_saying_privileged_is_not_enough(tmp_path: Path) -> None:
    """A backup whose header was edited to say privileged (or that was one) would make a
    container running its root - owners, setuid binaries - as host root: the request must say."""
    instances = FakeInstances()
    transfers = Transfers(instances)  # type: ignore[arg-type]
    path = backup_file(tmp_path, {"privileged": True, "template": "base"})
    with pytest.raises(InvalidRequest) as exc:
        transfers.check_restore({"file": path})
    assert "privileged container" in exc.value.message and "--privileged" in exc.value.message
    assert instances.reserved == []
    assert transfers.check_restore({"file": path, "privileged": True})["meta"]["privileged"] is True
    assert transfers.check_restore({"file": path, "privileged": False})["meta"]["privileged"] is False
    with pytest.raises(InvalidRequest, match="true or false"):
        transfers.check_restore({"file": path, "privileged": "yes"})


def test_an_unprivileged_backup_restores_unprivileged_unless_asked(tmp_path: Path) -> None:
    transfers = Transfers(FakeInstances())  # type: ignore[arg-type]
    path = backup_file(tmp_path, {"template": "base"})
    checked = transfers.check_restore({"file": path})
    assert checked["meta"]["privileged"] is False and checked["meta"]["template"] == "base"
    assert transfers.check_restore({"file": path, "privileged": True})["meta"]["privileged"] is True


def test_a_header_nested_too_deeply_is_400(tmp_path: Path) -> None:
    """ctd-backup.json may be 1 MiB: 500,000 '[' made json.loads raise RecursionError (a 500)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        body = b"[" * 500_000 + b"]" * 500_000
        ti = tarfile.TarInfo("ctd-backup.json")
        ti.size = len(body)
        tf.addfile(ti, io.BytesIO(body))
    path = tmp_path / "deep.backup"
    path.write_bytes(raw.getvalue())
    with pytest.raises(InvalidRequest, match="nests too deeply"):
        Transfers(FakeInstances()).check_restore({"file": str(path)})  # type: ignore[arg-type]


@pytest.mark.parametrize("limits,why", [({"ram": 99999999999 << 40}, "at most 8388607T"),
                                        ({"numproc": -5}, "numproc"), ({"ram": "lots"}, "invalid ram"),
                                        ({"cpus": 64}, "only 2 CPU"), ({"evil": 1}, "unknown limit"),
                                        ({"ram": [1]}, "numbers"), ("1G", "object")])
def test_the_backups_limits_are_validated_like_a_request(tmp_path: Path, limits: Any, why: str) -> None:
    instances = FakeInstances()
    path = backup_file(tmp_path, {"limits": limits})
    with pytest.raises(InvalidRequest) as exc:
        Transfers(instances).check_restore({"file": path})  # type: ignore[arg-type]
    assert "the backup's" in exc.value.message and why in exc.value.message, exc.value.message
    assert instances.reserved == []


def test_stored_limits_restore_as_they_were(tmp_path: Path) -> None:
    stored = {"ram": 512 << 20, "ram_high": 256 << 20, "swap": 1 << 30, "numproc": 100, "cpus": 2,
              "diskspace": 10 << 30, "ioprio": 6}
    path = backup_file(tmp_path, {"limits": stored})
    assert Transfers(FakeInstances()).check_restore({"file": path})["meta"]["limits"] == stored  # type: ignore[arg-type]


@pytest.mark.parametrize("meta,why", [
    ({"init": "/sbin/init"}, "init"), ({"init": ["/sbin/init", ""]}, "init"),
    ({"stop_signal": "SIGNOPE"}, "stop_signal"), ({"stop_signal": "SIGRTMIN+999"}, "stop_signal"),
    ({"hostname": "a" * 300}, "hostname"), ({"template": "../../etc"}, "template"),
    ({"options": ["systemd"]}, "options"), ({"options": {"network_style": "rm -rf"}}, "network_style"),
    ({"options": {"nameservers": ["not-an-ip"]}}, "not-an-ip"),
    ({"nics": [{"network": "n", "mode": "bogus"}]}, "nics"), ({"nics": [{"rate": 10 ** 30}]}, "nics"),
    ({"nics": [{"network": "n"}] * 9}, "at most 8")])
def test_the_rest_of_the_backups_meta_is_validated_too(tmp_path: Path, meta: dict[str, Any], why: str) -> None:
    """meta went into the new instance's record as it was: a KeyError or TypeError (a 500)
    later, or an init, hostname or option no request could have set."""
    instances = FakeInstances()
    with pytest.raises(InvalidRequest) as exc:
        Transfers(instances).check_restore({"file": backup_file(tmp_path, meta)})  # type: ignore[arg-type]
    assert "the backup's" in exc.value.message and why in exc.value.message, exc.value.message
    assert instances.reserved == []


def test_a_real_meta_passes_as_it_was(tmp_path: Path) -> None:
    meta = {"name": "web", "template": "debian-12", "hostname": "web.example", "privileged": False,
            "limits": {"ram": 1 << 30}, "init": ["/sbin/init", "--log-level=info"], "stop_signal": "SIGRTMIN+3",
            "options": {"systemd": True, "network_style": "networkd", "ssh_keys": [], "timezone": None,
                        "nameservers": ["10.0.0.1"]},
            "nics": [{"network": "ctbr0", "mode": "bridged", "filter": True, "rate": 10_000_000,
                      "addresses": ["10.0.0.5"]}]}
    checked = Transfers(FakeInstances()).check_restore({"file": backup_file(tmp_path, meta)})  # type: ignore[arg-type]
    got = checked["meta"]
    assert got["init"] == meta["init"] and got["stop_signal"] == "SIGRTMIN+3" and got["hostname"] == "web.example"
    assert got["options"] == {"systemd": True, "network_style": "networkd", "nameservers": ["10.0.0.1"]}
    assert got["nics"] == [{"network": "ctbr0", "mode": "bridged", "filter": True, "rate": 10_000_000}]
    assert got["limits"] == {"ram": 1 << 30} and got["template"] == "debian-12"


def test_a_backup_starting_with_a_huge_pax_header_is_400_unread(tmp_path: Path) -> None:
    """The backup's outer tar is read by tarfile too: a PAX header declaring 64 MiB would be
    read whole (three copies) before ctd-backup.json is even looked at."""
    import tracemalloc
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type, ti.size = tarfile.XHDTYPE, 64 << 20
    path = tmp_path / "bomb.backup"
    with path.open("wb") as fh:
        fh.write(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
        fh.truncate(512 + (64 << 20) + 1536)  # zeros (sparse here): the header's "records"
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest, match="PAX header of 67108864 bytes"):
            Transfers(FakeInstances()).check_restore({"file": str(path)})  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak
