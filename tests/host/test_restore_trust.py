"""Restore through a real ctd treats the backup's header as hostile; restore and reinstall give
the right identity and passwords.

A real backup of a busybox container is made once; each test rewrites its header (the first
member of the outer tar) the way someone handing the admin a file could, restores it with
ctctl, and checks what a tenant or an attacker would: uid_map inside, whether a forged address
gets through, whether a neighbour survives the copy's destroy, machine-id and ssh host keys,
root's hash in /etc/shadow. Everything made is destroyed, also on failure."""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.net import own_network

MACHINE_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def net(ctd) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    with own_network(ctd, "tr") as network:
        yield network


@pytest.fixture(scope="module")
def source(ctd, net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    """A stopped container with a NIC, limits, a password, a machine-id and ssh host keys, and
    its backup (tar driver: restores on any pool)."""
    name = ctd.unique("rsrc")
    ctd.ok("create", name, "--template", "busybox", "--net", net["name"], "--numproc", "100",
           "--userpasswd", "root:s3cret")
    try:
        root = ctd.rootfs(name)
        (root / "etc/machine-id").write_text(MACHINE_ID + "\n")
        (root / "etc/ssh").mkdir(exist_ok=True)
        for key in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
            (root / "etc/ssh" / key).write_text(f"{key} of the source\n")
        out = tmp_path_factory.mktemp("restore-trust") / "source.backup"
        ctd.ok("backup", name, str(out), "--tar")
        yield {"name": name, "file": out, "dir": out.parent}
    finally:
        ctd.ctl("destroy", "--force", name)


@pytest.fixture
def restored(ctd) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """Names a test restores to; destroyed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        ctd.ctl("destroy", "--force", name)


def tampered(src: Path, change: Callable[[dict], None]) -> Path:
    """A copy of the backup src whose header JSON went through change()."""
    out = src.parent / f"tampered-{os.urandom(4).hex()}.backup"
    with tarfile.open(src) as tf, tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as dst:
        first, member = tf.next(), tf.next()
        assert first is not None and member is not None and first.name == "ctd-backup.json"
        header = json.loads(tf.extractfile(first).read())  # type: ignore[union-attr]
        change(header)
        body = json.dumps(header).encode()
        info = tarfile.TarInfo("ctd-backup.json")
        info.size = len(body)
        dst.addfile(info, io.BytesIO(body))
        dst.addfile(member, tf.extractfile(member))
    return out


def meta_set(**fields):  # type: ignore[no-untyped-def]
    def change(header: dict) -> None:
        header["meta"].update(fields)
    return change


def nothing_left(ctd, name: str, before: list[str]) -> None:  # type: ignore[no-untyped-def]
    storage = ctd.state_dir / "storage"
    assert sorted(p.name for p in (storage / "instances").iterdir()) == before
    assert not [p for p in storage.iterdir() if p.name.startswith(".restore-")]
    assert ctd.ctl("status", name).code == 1


def shadow_hash(ctd, name: str, user: str = "root") -> str:  # type: ignore[no-untyped-def]
    for line in (ctd.rootfs(name) / "etc/shadow").read_text().splitlines():
        if line.split(":")[0] == user:
            return line.split(":")[1]
    raise AssertionError(f"{user} not in /etc/shadow")


# ---------------------------------------------------------------- the header is untrusted

def test_privileged_in_the_file_gives_an_unprivileged_container(ctd, source, restored):
    evil = tampered(source["file"], meta_set(privileged=True))
    name = ctd.unique("rpriv")
    restored.append(name)
    out = ctd.ok("restore", str(evil), "--name", name)
    inst = ctd.instance(name)
    ctd.ok("start", name)
    uid_map = ctd.sh(name, "cat /proc/self/uid_map").out.split()
    assert uid_map[:2] != ["0", "0"], f"root inside is host root: uid_map {uid_map}"
    assert inst["privileged"] is False and uid_map[:2] == ["0", str(inst["idmap"]["uid_base"])]
    assert "privileged" in out  # the note says the file asked for it and did not get it
    # only the admin's own flag makes one privileged
    admin = ctd.unique("rpriv")
    restored.append(admin)
    ctd.ok("restore", str(evil), "--name", admin, "--privileged")
    assert ctd.instance(admin)["privileged"] is True


def test_filter_off_in_the_file_keeps_anti_spoofing(ctd, source, net, restored):
    evil = tampered(source["file"], lambda h: [n.update(filter=False, mac="02:00:00:00:00:01",
                                                          addresses=["10.254.254.254"])
                                               for n in h["meta"]["nics"]])
    filtered, free = ctd.unique("rfil"), ctd.unique("rfil")
    for name, want, flags in ((filtered, True, []), (free, False, ["--no-filter"])):
        restored.append(name)
        ctd.ok("restore", str(evil), "--name", name, *flags)
        nic = ctd.instance(name)["nics"][0]
        assert (nic["network"], nic["filter"]) == (net["name"], want)
        assert nic["mac"] != "02:00:00:00:00:01" and nic["addresses"] != ["10.254.254.254"]
        ctd.ok("start", name)
        ip = nic["addresses"][0]
        other = ip.rsplit(".", 1)[0] + (".201" if name == filtered else ".202")
        ctd.sh(name, f"ip addr add {other}/24 dev eth0")
        got = ctd.sh(name, f"ping -c1 -W2 -I {other} {net['gateway']}").code
        assert (got != 0) is want, f"{name}: a forged source address {'got through' if want else 'was dropped'}"


def test_runtime_state_in_the_file_cannot_aim_destroy_at_a_neighbour(ctd, source, make_container, restored):
    victim = make_container()
    pid = ctd.instance(victim)["pid"]
    hierarchies = ctd.instance(victim)["cgroups"]
    assert hierarchies, "the victim runs, so ctd reports its cgroups"
    aim = {h: os.path.basename(d) for h, d in hierarchies.items()}  # the victim's groups, everywhere
    evil = tampered(source["file"], lambda h: h["meta"]["options"].update(cgroup_fixed=aim))
    name = ctd.unique("raim")
    restored.append(name)
    out = ctd.ok("restore", str(evil), "--name", name)
    ctd.ok("destroy", "--force", name)
    time.sleep(0.2)
    assert Path(f"/proc/{pid}").exists(), "destroying the restored copy killed the neighbour"
    assert ctd.instance(victim)["state"] == "running" and ctd.instance(victim)["pid"] == pid
    assert ctd.sh(victim, "echo alive").out.strip() == "alive"
    assert "cgroup_fixed" in out  # the note says it was not restored


@pytest.mark.parametrize("field, change, why", [
    ("limits", meta_set(limits={"numproc": "abc"}), "invalid numproc 'abc'"),
    ("limits", meta_set(limits={"ram": -5}), "invalid ram"),
    ("limits", meta_set(limits={"cpus": 4096}), "this host has only"),
    ("limits", meta_set(limits={"numproc": -1}), "invalid numproc"),
    ("limits", meta_set(limits={"numproc": 10**30}), "from 1 to 4194304"),
    ("init", meta_set(init="/bin/sh -c 'evil'"), "command line"),
    ("stop_signal", meta_set(stop_signal="SIGNOPE"), "unknown stop_signal"),
    ("options", lambda h: h["meta"]["options"].update(network_style="evil"), "network_style"),
    ("options", lambda h: h["meta"]["options"].update(ssh_keys=["no key"]), "ssh key"),
    ("nics", lambda h: h["meta"]["nics"][0].update(mode="macvlan"), "invalid mode"),
    ("nics", lambda h: h["meta"]["nics"][0].update(rate="fast"), "invalid rate"),
    # restored under the file's own name (as on a host without the source): name and hostname count
    ("hostname", lambda h: h.update(name="rbad-host") or h["meta"].update(hostname="evil host"),
     "invalid hostname"),
    ("template", meta_set(template="../../x"), "invalid template name"),
    ("name", lambda h: h.update(name="../../evil"), "--name NEW"),
])
def test_a_tampered_field_is_refused_by_name_and_leaves_nothing(ctd, source, field, change, why):
    evil = tampered(source["file"], change)
    before = sorted(p.name for p in (ctd.state_dir / "storage/instances").iterdir())
    target = "rbad-host" if field == "hostname" else ctd.unique("rbad")
    args = ["restore", str(evil)] + ([] if field in ("name", "hostname") else ["--name", target])
    r = ctd.ctl(*args)
    assert r.code == 1 and f"backup header, {field}:" in r.err and why in r.err, r.err
    nothing_left(ctd, target, before)


def test_limits_given_at_restore_replace_broken_ones_and_it_starts(ctd, source, restored):
    evil = tampered(source["file"], meta_set(limits={"numproc": "abc", "ram": -5}))
    name = ctd.unique("rlim")
    restored.append(name)
    ctd.ok("restore", str(evil), "--name", name, "--numproc", "64", "--ram", "128M")
    assert ctd.instance(name)["limits"] == {"numproc": 64, "ram": "128M"}
    ctd.ok("start", name)
    assert ctd.instance(name)["state"] == "running"


# ---------------------------------------------------------------- identity and passwords

def test_a_copy_gets_a_new_identity_and_a_restore_in_place_keeps_it(ctd, source, restored):
    copy = ctd.unique("rcopy")
    restored.append(copy)
    ctd.ok("restore", str(source["file"]), "--name", copy)
    root = ctd.rootfs(copy)
    new_id = (root / "etc/machine-id").read_text().strip()
    assert new_id != MACHINE_ID and len(new_id) == 32
    assert not [p.name for p in (root / "etc/ssh").iterdir() if p.name.startswith("ssh_host_")]
    assert ctd.instance(copy)["hostname"] == copy
    # the same instance back (the source is gone): it is the same machine
    same = tampered(source["file"], lambda h: h.update(name=ctd.unique("rsame")))
    with tarfile.open(same) as tf:
        back = json.loads(tf.extractfile(tf.next()).read())["name"]  # type: ignore[union-attr]
    restored.append(back)
    ctd.ok("restore", str(same))
    root = ctd.rootfs(back)
    assert (root / "etc/machine-id").read_text().strip() == MACHINE_ID
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["ssh_host_ed25519_key",
                                                                   "ssh_host_ed25519_key.pub"]
    # the password set at create came along, and so did its hash for a later reinstall (here
    # the old root has no shadow to take it from)
    created = shadow_hash(ctd, source["name"])
    assert shadow_hash(ctd, back) == created != "*"
    (root / "etc/shadow").unlink()
    ctd.ok("reinstall", back)
    assert shadow_hash(ctd, back) == created


def test_reinstall_keeps_roots_password(ctd, make_container):
    name = make_container(start=False, userpasswd="root:s3cret")
    created = shadow_hash(ctd, name)
    assert created.startswith("$6$")
    ctd.ok("reinstall", name)
    assert shadow_hash(ctd, name) == created
    # the tenant changed it inside: reinstall keeps the tenant's
    shadow = ctd.rootfs(name) / "etc/shadow"
    changed = "$6$tenant$" + "b" * 86
    shadow.write_text(shadow.read_text().replace(created, changed))
    ctd.ok("reinstall", name)
    assert shadow_hash(ctd, name) == changed
    # a tenant's hostile shadow (a FIFO) does not block the reinstall: ctd's own hash is used
    shadow.unlink()
    os.mkfifo(shadow)
    ctd.ok("reinstall", name)
    assert shadow_hash(ctd, name) == created


def test_reinstall_restart_stops_reinstalls_and_starts(ctd, make_container):
    name = make_container()
    ctd.sh(name, "echo old > /root/marker")
    pid = ctd.instance(name)["pid"]
    r = ctd.ctl("reinstall", name)
    assert r.code == 1 and "--restart" in r.err
    ctd.ok("reinstall", "--restart", name)
    inst = ctd.instance(name)
    assert inst["state"] == "running" and inst["pid"] != pid
    assert ctd.sh(name, "cat /root/marker").code != 0
