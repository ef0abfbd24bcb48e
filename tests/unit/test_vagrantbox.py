"""ctctl's Vagrant box: the template's rootfs made Vagrant-ready, member by member."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from ctctl import vagrantbox

PASSWD = "root:x:0:0:root:/root:/bin/bash\n"
GROUP = "root:x:0:\nsudo:x:27:\n"


def rootfs(path: Path, passwd: str = PASSWD, group: str = GROUP, extra: dict[str, bytes] | None = None) -> Path:
    files = {"./etc/passwd": passwd.encode(), "./etc/group": group.encode(), "./etc/shadow": b"root:*:1::::::\n",
             "./bin/sh": b"#!binary", **(extra or {})}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as out:
        for d in ("./", "./etc/", "./bin/", "./home/"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            out.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            out.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./bin/sh2")
        link.type, link.linkname = tarfile.LNKTYPE, "./bin/sh"
        out.addfile(link)
    return path


def members(box: Path) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(box) as outer:
        meta = json.loads(outer.extractfile("metadata.json").read())  # type: ignore[union-attr]
        assert meta["provider"] == "ctd"
        inner = outer.extractfile("rootfs.tar.gz").read()  # type: ignore[union-attr]
    out = {}
    with tarfile.open(fileobj=io.BytesIO(inner), mode="r:gz") as tar:
        for info in tar:
            f = tar.extractfile(info) if info.isfile() else None
            out[info.name.removeprefix("./")] = (info, f.read() if f else b"")
    return out


def test_box_has_the_vagrant_user_sudo_and_insecure_key(tmp_path: Path) -> None:
    box = tmp_path / "x.box"
    assert vagrantbox.write_box(rootfs(tmp_path / "r.tar.gz"), box, "debian-12") == box.stat().st_size
    m = members(box)
    assert m["etc/passwd"][1].decode().splitlines()[-1] == "vagrant:x:1000:1000:vagrant:/home/vagrant:/bin/bash"
    assert "sudo:x:27:vagrant" in m["etc/group"][1].decode()
    assert m["etc/shadow"][1].decode().endswith("vagrant:*:19000:0:99999:7:::\n")
    sudoers, data = m["etc/sudoers.d/vagrant"]
    assert data == b"vagrant ALL=(ALL) NOPASSWD:ALL\n" and sudoers.mode == 0o440 and sudoers.uid == 0
    keys, data = m["home/vagrant/.ssh/authorized_keys"]
    assert data.decode().startswith("ssh-rsa ") and "vagrant insecure public key" in data.decode()
    assert (keys.uid, keys.gid, keys.mode) == (1000, 1000, 0o600)
    assert m["home/vagrant/.ssh"][0].mode == 0o700 and m["home/vagrant"][0].uid == 1000
    assert m["bin/sh"][1] == b"#!binary" and m["bin/sh2"][0].islnk()  # the rest as it was
    assert not list(tmp_path.glob(".x.box*"))  # no scratch files left


@pytest.mark.parametrize("passwd,group", [
    (PASSWD + "dev:x:1000:1000::/home/dev:/bin/sh\n", GROUP),
    (PASSWD + "vagrant:x:1001:1001::/home/vagrant:/bin/sh\n", GROUP),
    (PASSWD, GROUP + "users2:x:1000:\n"),
])
def test_taken_ids_are_refused_and_no_box_is_left(tmp_path: Path, passwd: str, group: str) -> None:
    box = tmp_path / "x.box"
    with pytest.raises(vagrantbox.BoxError, match="vagrant user or id 1000"):
        vagrantbox.write_box(rootfs(tmp_path / "r.tar.gz", passwd, group), box, "t")
    assert list(tmp_path.iterdir()) == [tmp_path / "r.tar.gz"]


def test_a_template_planting_its_own_key_or_sudoers_does_not_keep_them(tmp_path: Path) -> None:
    """A template made from a tenant's instance may carry its own /home/vagrant files: the
    box's are the ones that count (the tenant's key would give it the box's users)."""
    planted = {"./home/vagrant/.ssh/authorized_keys": b"ssh-ed25519 AAAA tenant\n",
               "./etc/sudoers.d/vagrant": b"ALL ALL=(ALL) NOPASSWD:ALL\n"}
    box = tmp_path / "x.box"
    vagrantbox.write_box(rootfs(tmp_path / "r.tar.gz", extra=planted), box, "t")
    m = members(box)
    assert b"tenant" not in m["home/vagrant/.ssh/authorized_keys"][1]
    assert m["etc/sudoers.d/vagrant"][1] == b"vagrant ALL=(ALL) NOPASSWD:ALL\n"


def test_not_a_root_filesystem(tmp_path: Path) -> None:
    src = tmp_path / "r.tar.gz"
    with tarfile.open(src, "w:gz"):
        pass
    with pytest.raises(vagrantbox.BoxError, match="no /etc/passwd"):
        vagrantbox.write_box(src, tmp_path / "x.box", "t")


@pytest.mark.parametrize("release,guest", [('ID=debian\nVERSION_ID="12"\n', ":debian"),
                                           ('NAME="Rocky"\nID="rocky"\n', ":rocky"),
                                           ("ID=plan9\n", None)])
def test_box_names_its_guest_from_os_release(tmp_path: Path, release: str, guest: str | None) -> None:
    """A known distribution's box sets config.vm.guest (no guest detection over ssh at `up`);
    an unknown one leaves it to Vagrant."""
    box = tmp_path / "x.box"
    vagrantbox.write_box(rootfs(tmp_path / "r.tar.gz", extra={"./usr/lib/os-release": release.encode()}), box, "t")
    with tarfile.open(box) as outer:
        vagrantfile = outer.extractfile("Vagrantfile").read().decode()  # type: ignore[union-attr]
    line = f"config.vm.guest = {guest}"
    assert (line in vagrantfile) if guest else ("config.vm.guest" not in vagrantfile), vagrantfile
    assert members(box)["usr/lib/os-release"][1] == release.encode()  # copied as it was
