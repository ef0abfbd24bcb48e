"""vagrant up --provider=ctd with real Vagrant, a box exported from debian-12, and the cases a
user gets wrong: an unknown box, no ctd running, a name ctd has already."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers.vagrant import Vagrant
from tests.host.test_network_nat import netns, netns_ctd  # noqa: F401 (fixtures)

# the first test of the module also builds debian-12 (1-5 min here) and exports it as a box
pytestmark = pytest.mark.timeout(1800)

VAGRANTFILE = """
Vagrant.configure("2") do |config|
  config.vm.box = "{box}"
  config.vm.hostname = "devbox"
  config.vm.provision "shell", inline: "date >> /home/vagrant/provisioned"
  config.vm.provision "file", source: "hello.txt", destination: "/home/vagrant/hello.txt"
  config.vm.provider :ctd do |ctd|
    ctd.memory = 512
    ctd.cpus = 1
    ctd.network = "{net}"
    ctd.network_subnet = "auto"
    {extra}
  end
end
"""


def project(tmp_path: Path, box: str, extra: str = "") -> tuple[Path, str]:
    """A Vagrant project directory (in pytest's 0700 tmp dirs: ctd binds the synced folder as
    host root); the network name is the test's own."""
    net = f"vg{uuid.uuid4().hex[:6]}"
    d = tmp_path / "proj"
    d.mkdir()
    (d / "Vagrantfile").write_text(VAGRANTFILE.format(box=box, net=net, extra=extra))
    (d / "marker").write_text("synced\n")
    (d / "hello.txt").write_text("hello from the host\n")
    return d, net


def leftovers(ctd, net: str) -> list[str]:  # type: ignore[no-untyped-def]
    names = [i["name"] for i in ctd.client.get("/1.0/instances")["instances"] if i["name"].startswith("proj-")]
    nets = [n["name"] for n in ctd.client.get("/1.0/networks")["networks"] if n["name"] == net]
    return names + nets


def test_up_ssh_provision_snapshot_halt_destroy(ctd, vagrant: Vagrant, box: str, tmp_path: Path) -> None:
    d, net = project(tmp_path, box)
    try:
        said = vagrant.ok(d, "up", "--provider=ctd")
        assert ctd.instance("proj-default")["state"] == "running"
        assert "Inserted the machine's own ssh key (through ctd)" in said, said  # no ssh round trips
        out = vagrant.ok(d, "ssh", "-c", "systemctl is-system-running; hostname; cat /vagrant/marker; "
                                         "cat ~/hello.txt; wc -l < ~/provisioned; id -un; sudo -n id -u")
        lines = out.split()
        assert lines[0] in ("running", "degraded"), out  # systemd came up
        assert lines[1:] == ["devbox", "synced", "hello", "from", "the", "host", "1", "vagrant", "0"], out
        # the insecure key was replaced by the machine's own at the first up
        key = (d / ".vagrant/machines/default/ctd/private_key")
        assert key.is_file()
        assert "vagrant insecure public key" not in vagrant.ok(d, "ssh", "-c", "cat ~/.ssh/authorized_keys")
        assert "HostName" in vagrant.ok(d, "ssh-config")
        assert "running" in vagrant.ok(d, "status")

        vagrant.ok(d, "provision")
        assert vagrant.ok(d, "ssh", "-c", "wc -l < ~/provisioned").strip() == "2"

        vagrant.ok(d, "snapshot", "save", "clean")
        assert "clean" in vagrant.ok(d, "snapshot", "list")
        vagrant.ok(d, "ssh", "-c", "touch ~/after-snapshot")
        vagrant.ok(d, "snapshot", "restore", "--no-provision", "clean")
        assert vagrant.ok(d, "ssh", "-c", "ls ~").split() == ["hello.txt", "provisioned"]
        vagrant.ok(d, "snapshot", "delete", "clean")
        assert ctd.client.get("/1.0/instances/proj-default/snapshots")["snapshots"] == []

        vagrant.ok(d, "suspend")
        assert ctd.instance("proj-default")["state"] == "suspended"
        vagrant.ok(d, "resume")
        assert vagrant.ok(d, "ssh", "-c", "hostname").strip() == "devbox"
        vagrant.ok(d, "reload")
        assert vagrant.ok(d, "ssh", "-c", "wc -l < ~/provisioned").strip() == "2"  # reload does not provision

        vagrant.ok(d, "halt")
        assert ctd.instance("proj-default")["state"] == "stopped"
        assert "stopped" in vagrant.ok(d, "status")
        vagrant.ok(d, "up")
        assert vagrant.ok(d, "ssh", "-c", "hostname; wc -l < ~/provisioned").split() == ["devbox", "2"]

        vagrant.ok(d, "destroy", "-f")
        assert leftovers(ctd, net) == []
        assert "not created" in vagrant.ok(d, "status")
        # the box's template stays, imported once for every machine of the box
        assert any(t["name"] == "vagrant-ctd-debian-12-0" and t["built"]
                   for t in ctd.client.get("/1.0/templates")["templates"])
    finally:
        vagrant.run(d, "destroy", "-f")
        for name in leftovers(ctd, net):
            ctd.ctl("destroy", "--force", name)
            ctd.ctl("network", "delete", name)


def error_of(r) -> str:  # type: ignore[no-untyped-def]
    assert r.returncode != 0, r.stdout
    return r.stderr.strip()


def test_unknown_box(ctd, vagrant: Vagrant, tmp_path: Path) -> None:
    d, net = project(tmp_path, "no-such-box")
    err = error_of(vagrant.run(d, "up", "--provider=ctd"))
    assert 'box "no-such-box" is not added for provider ctd' in err and "--vagrant-box" in err, err
    assert "Traceback" not in err and "/lib/" not in err
    assert leftovers(ctd, net) == []


def test_ctd_not_running(vagrant: Vagrant, box: str, tmp_path: Path) -> None:
    d, _ = project(tmp_path, box)
    err = error_of(vagrant.run(d, "up", "--provider=ctd", CTD_SOCKET=str(tmp_path / "none.sock")))
    assert err.startswith("ctd: ctd is not running") and len(err.splitlines()) == 1, err


def test_name_taken(ctd, vagrant: Vagrant, box: str, tmp_path: Path) -> None:
    taken = f"taken-{uuid.uuid4().hex[:6]}"
    ctd.ok("create", taken, "--template", "busybox", "--net", "none")
    d, net = project(tmp_path, box, extra=f'ctd.name = "{taken}"')
    try:
        err = error_of(vagrant.run(d, "up", "--provider=ctd"))
        assert err.startswith("ctd: ") and taken in err and len(err.splitlines()) == 1, err
        assert ctd.instance(taken)["template"] == "busybox"  # the other instance is untouched
        assert "not created" in vagrant.ok(d, "status")
        assert leftovers(ctd, net) == []  # the network the failed up made went with it
    finally:
        ctd.ctl("destroy", "--force", taken)


def test_package_makes_a_box_of_the_instance(ctd, vagrant: Vagrant, box: str, tmp_path: Path) -> None:
    import json
    import tarfile

    d, net = project(tmp_path, box)
    out = tmp_path / "packaged.box"
    try:
        vagrant.ok(d, "up", "--provider=ctd")
        vagrant.ok(d, "ssh", "-c", "echo built-here > ~/mark")
        vagrant.ok(d, "package", "--output", str(out))
        with tarfile.open(out) as t:  # Vagrant's bsdtar names them ./NAME
            names = {n.removeprefix("./") for n in t.getnames()}
            meta = json.loads(t.extractfile("./metadata.json").read())  # type: ignore[union-attr]
        assert meta["provider"] == "ctd" and "rootfs.tar.gz" in names, names
        assert "vagrant_private_key" in names  # the machine's key goes with its box, as Vagrant does
        templates = ctd.client.get("/1.0/templates")["templates"]
        assert not [t for t in templates if t["name"].startswith("vagrant-package-")]  # the scratch one went
        vagrant.ok(d, "destroy", "-f")
        assert leftovers(ctd, net) == []
    finally:
        vagrant.run(d, "destroy", "-f")
        for name in leftovers(ctd, net):
            ctd.ctl("destroy", "--force", name)
            ctd.ctl("network", "delete", name)


def test_forwarded_port_on_a_nat_network(vagrant: Vagrant, box: str, netns_ctd, tmp_path: Path) -> None:  # noqa: F811
    """forwarded_port as a ctd port forward of a NAT network: with a ctd (and Vagrant) in a
    network namespace of the test's, so the NAT network switches forwarding on there, never on
    the host. The forward is reached at the network's gateway (an address of that namespace's)
    and answers with the guest's sshd; it goes with destroy, as the network the plugin made."""
    d, ns = netns_ctd
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    v = dataclasses.replace(vagrant, socket=d.socket, launcher=("nsenter", f"--net=/run/netns/{ns}"))
    port = random.randrange(20000, 30000)
    proj, net = project(tmp_path, box, extra="ctd.network_nat = true")
    vf = proj / "Vagrantfile"
    vf.write_text(vf.read_text().replace(
        '  config.vm.provider', f'  config.vm.network "forwarded_port", guest: 22, host: {port}\n  config.vm.provider'))
    try:
        v.ok(proj, "up", "--provider=ctd")
        [fwd] = d.client.get(f"/1.0/networks/{net}/forwards")["forwards"]
        assert (fwd["instance"], fwd["host_port"], fwd["port"], fwd["proto"]) == ("proj-default", port, 22, "tcp")
        gateway = d.client.get(f"/1.0/networks/{net}")["network"]["gateway"]
        banner = subprocess.run(
            ["nsenter", f"--net=/run/netns/{ns}", "python3", "-c",
             f"import socket; print(socket.create_connection(('{gateway}', {port}), 5).recv(64).decode())"],
            capture_output=True, text=True, timeout=30)
        assert banner.stdout.startswith("SSH-2.0-OpenSSH"), banner
        v.ok(proj, "destroy", "-f")
        assert leftovers(d, net) == []
    finally:
        v.run(proj, "destroy", "-f")


def test_vm_request(ctd, vagrant: Vagrant, tmp_path: Path) -> None:
    """ctd.type = "vm": the VM ctd makes for the Vagrantfile (its RAM, vCPUs, disk, NIC, hostname;
    no host mount: a VM's synced folders are rsync'd). A Debian VM under TCG needs about a minute
    to answer ssh here, so the guest is not booted to ssh: Vagrant's boot timeout (5 s) ends the
    up with its own error, and destroy takes the VM and the network away. (No host mount is
    asked for a VM: ctd would refuse the create.)"""
    extra = 'ctd.type = "vm"\n    ctd.template = "busybox"\n    ctd.diskspace = "1G"'
    d, net = project(tmp_path, "unused", extra=extra)
    vf = d / "Vagrantfile"
    vf.write_text(vf.read_text().replace('  config.vm.box = "unused"\n', "  config.vm.boot_timeout = 5\n"))
    try:
        err = error_of(vagrant.run(d, "up", "--provider=ctd"))
        assert "Timed out while waiting for the machine to boot" in err, err
        vm = ctd.instance("proj-default")
        assert (vm["type"], vm["state"], vm["hostname"]) == ("vm", "running", "devbox"), vm
        assert (vm["limits"]["ram"], str(vm["limits"]["cpus"])) == ("512M", "1"), vm["limits"]
        assert vm["vm"]["disk_size"] in (1 << 30, "1G"), vm["vm"]
        [nic] = vm["nics"]
        assert nic["network"] == net and any("." in a for a in nic["addresses"]), nic
        vagrant.ok(d, "destroy", "-f")
        assert leftovers(ctd, net) == []
        # container-only settings, and a forward to loopback (DNAT does not reach it), are
        # refused before anything is made
        vf.write_text(vf.read_text().replace('ctd.type = "vm"', 'ctd.type = "vm"\n    ctd.features = ["tun"]').replace(
            "  config.vm.provider", '  config.vm.network "forwarded_port", guest: 80, host: 8080, host_ip: "127.0.0.1"\n'
            "  config.vm.provider"))
        err = error_of(vagrant.run(d, "validate"))
        assert "ctd.features are container features" in err and "loopback (127.0.0.1)" in err, err
    finally:
        vagrant.run(d, "destroy", "-f")
        for name in leftovers(ctd, net):
            ctd.ctl("destroy", "--force", name)
            ctd.ctl("network", "delete", name)
