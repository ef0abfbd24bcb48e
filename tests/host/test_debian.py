"""A real VPS: the Debian 12 template with systemd, configured from the host, reached by ssh.

The template is built once per run (about a minute, from the host's apt sources).
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.net import own_network


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ssh") / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def lan(ctd):
    with own_network(ctd, "td") as net:
        yield net


@pytest.fixture
def vps(ctd, debian, key, lan):
    made = []

    def make(**opts: str) -> str:
        name = ctd.unique("deb")
        args = ["create", name, "--template", debian, "--net", lan["name"], "--ram", "512M",
                "--ssh-key", f"{key}.pub", "--nameserver", lan["gateway"]]
        for k, v in opts.items():
            args += [f"--{k}", v]
        ctd.ok(*args)
        made.append(name)
        ctd.ok("start", name)
        return name

    yield make
    for name in made:
        ctd.ctl("destroy", "--force", name)


def system_state(ctd, name) -> str:
    """systemd's state once its boot is over. `--wait` waits for the boot, but only once systemctl
    reaches the manager: an exec that comes before systemd made its socket gets nothing (and
    "Failed to connect to bus" on stderr), so ask again until it answers."""
    deadline = time.monotonic() + 120
    while True:
        r = ctd.ctl("exec", name, "--", "systemctl", "is-system-running", "--wait", timeout=120)
        if r.out.strip() or time.monotonic() > deadline:
            return r.out.strip() or f"(no answer: exit {r.code}, {r.err.strip()})"
        time.sleep(0.5)


def ssh(key: Path, address: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"root@{address}", command],
                          capture_output=True, text=True, timeout=60)


def address(ctd, name) -> str:
    return ctd.instance(name)["nics"][0]["addresses"][0]


def test_boots_to_running_with_no_failed_unit(ctd, vps):
    name = vps()
    state = system_state(ctd, name)
    failed = ctd.ctl("exec", name, "--", "systemctl", "--failed", "--no-legend", "--plain").out
    assert state == "running", f"{state}; failed units:\n{failed}"
    env = ctd.sh(name, "tr '\\0' '\\n' < /proc/1/environ").out
    assert "container=ctd" in env
    assert ctd.sh(name, "journalctl -b --no-pager | grep -c 'Startup finished'").out.strip() != "0"


def test_ssh_with_the_key_over_the_bridge(ctd, vps, key):
    name = vps()
    system_state(ctd, name)
    r = ssh(key, address(ctd, name), "hostname")
    assert r.returncode == 0 and r.stdout.strip() == name, r.stderr


def test_inside_sees_its_limits_and_a_working_debian(ctd, vps):
    name = vps(cpus="1")
    mem = ctd.sh(name, "free -m | awk '/^Mem:/ {print $2}'").out.strip()
    assert mem == "512"
    # the host's kernel symbols stay masked in a systemd guest too (its plan has extra steps)
    assert ctd.sh(name, "wc -c < /proc/kallsyms").out.strip() == "0"
    assert ctd.sh(name, "nproc").out.strip() == "1"
    assert ctd.sh(name, "apt-get --version").out.startswith("apt ")
    assert int(ctd.sh(name, "dpkg -l | grep -c '^ii'").out) > 100
    assert ctd.sh(name, "uptime -p").code == 0


def test_exec_tty_is_its_own_terminal(ctd, vps):
    """`exec -t` gets a pty of the guest's own devpts: `tty` names it, and util-linux's mesg,
    which checks the terminal it stands on, works."""
    name = vps()
    out = ctd.ctl("exec", "-t", name, "--", "/bin/sh", "-c", "tty; mesg y && mesg").out.split()
    assert out[0].startswith("/dev/pts/") and out[1:] == ["is", "y"], out


def test_password_is_hashed_into_shadow_never_kept(ctd, debian, lan):
    name = ctd.unique("pw")
    try:
        ctd.ok("create", name, "--template", debian, "--userpasswd", "root:s3cret-Pass")
        shadow = (ctd.rootfs(name) / "etc/shadow").read_text()
        assert "\nroot:$6$" in "\n" + shadow and "s3cret" not in shadow
        assert b"s3cret" not in (ctd.state_dir / "ctd.db").read_bytes()
    finally:
        ctd.ctl("destroy", "--force", name)


def test_stop_is_clean_and_quick(ctd, vps):
    name = vps()
    system_state(ctd, name)
    pid = ctd.instance(name)["pid"]
    start = time.monotonic()
    ctd.ok("stop", "--timeout", "20", name)
    took = time.monotonic() - start
    assert took < 10, f"stop took {took:.1f} s"
    assert ctd.instance(name)["state"] == "stopped"
    assert not Path(f"/proc/{pid}/status").exists() or "Z" in Path(f"/proc/{pid}/status").read_text()


def test_reboot_inside_restarts_it(ctd, vps):
    name = vps()
    system_state(ctd, name)
    first = ctd.instance(name)["pid"]
    ctd.ctl("exec", name, "--", "systemctl", "reboot")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        inst = ctd.instance(name)
        if inst["state"] == "running" and inst["pid"] not in (None, first):
            break
        time.sleep(0.3)
    assert ctd.instance(name)["pid"] != first and ctd.instance(name)["state"] == "running"
    assert system_state(ctd, name) == "running"


def test_reinstall_keeps_id_address_and_key(ctd, vps, key):
    name = vps()
    before = ctd.instance(name)
    ctd.sh(name, "echo old > /root/marker")
    ctd.ok("stop", name)
    ctd.ok("reinstall", name)
    ctd.ok("start", name)
    after = ctd.instance(name)
    assert (after["id"], address(ctd, name)) == (before["id"], before["nics"][0]["addresses"][0])
    assert ctd.sh(name, "cat /root/marker").code != 0
    system_state(ctd, name)
    assert ssh(key, address(ctd, name), "hostname").stdout.strip() == name


def test_hostile_symlinks_do_not_redirect_setup_writes(ctd, vps, key, tmp_path):
    name = vps()
    canary = Path(f"/tmp/ctd-canary-{uuid.uuid4().hex[:8]}")
    (canary / "ssh").mkdir(parents=True)
    (canary / "hosts").write_text("host file\n")
    (canary / "ssh" / "authorized_keys").write_text("host keys\n")
    try:
        ctd.sh(name, f"rm -f /etc/hosts && ln -s {canary}/hosts /etc/hosts")
        # /etc/hosts: the symlink is replaced by a file inside the guest
        ctd.ok("set", name, "--nameserver", "192.0.2.53", "--timezone", "UTC")
        assert (canary / "hosts").read_text() == "host file\n"
        assert not ctd.sh(name, "test -L /etc/hosts && echo link").out
        assert "nameserver 192.0.2.53" in ctd.sh(name, "cat /etc/resolv.conf").out
        # /root/.ssh: resolved inside the guest's root, where it leads nowhere: a clear refusal
        ctd.sh(name, f"rm -rf /root/.ssh && ln -s {canary}/ssh /root/.ssh")
        r = ctd.ctl("set", name, "--ssh-key", f"{key}.pub")
        assert r.code == 1 and "/root/.ssh" in r.err, r.err
        assert (canary / "ssh" / "authorized_keys").read_text() == "host keys\n"
        assert (canary / "hosts").read_text() == "host file\n"
    finally:
        subprocess.run(["rm", "-rf", str(canary)])


def test_bad_template_input(ctd):
    r = ctd.ctl("template", "build", "debian-99")
    assert r.code == 1 and "no template recipe" in r.err
    # a mirror that answers nothing (loopback, closed port): a clear error, no half template
    r = ctd.ctl("template", "build", "debian-13", "--mirror", "http://127.0.0.1:9/debian", timeout=300)
    assert r.code == 1 and "mmdebstrap failed" in r.err
    templates = {t["name"]: t for t in ctd.client.get("/1.0/templates")["templates"]}
    assert templates["debian-13"]["built"] is False
    assert not list((ctd.state_dir / "storage/templates").glob(".build-*"))


def test_a_clone_gets_its_own_machine_id_and_ssh_host_keys(ctd, vps, lan):
    src = vps()
    assert system_state(ctd, src) == "running"   # first boot made its ssh host keys

    def identity(name: str) -> tuple[str, str]:
        out = ctd.sh(name, "cat /etc/machine-id; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").out.split("\n")
        return out[0].strip(), out[1].split()[1]

    src_id, src_key = identity(src)
    ctd.ok("stop", src)
    dst = ctd.unique("debclone")
    try:
        ctd.ok("clone", src, dst)
        ctd.ok("start", dst)
        assert system_state(ctd, dst) == "running"
        dst_id, dst_key = identity(dst)
        assert dst_id != src_id and len(dst_id) == 32
        assert dst_key != src_key
        ctd.ok("start", src)
        assert identity(src) == (src_id, src_key)   # the source keeps its own
    finally:
        ctd.ctl("destroy", "--force", dst)


def _device_nodes(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if not p.is_symlink() and (p.is_char_device() or p.is_block_device())]


@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
def test_host_console_stays_shut(ctd, debian, lan, probe, privileged):
    """mmdebstrap leaves dev/console (c 5:1, 0666: the host's console) in its tree; ctd strips
    every node from a template it builds. A root built before that still carries it: the node
    is planted back here, and a guest reaching it through a bind of / gets nothing (nodev, and
    the device list once root inside lifts nodev). systemd still boots with the list on."""
    import os
    import shutil
    import stat
    assert _device_nodes(ctd.state_dir / "storage" / "templates" / debian / "rootfs") == []
    name = ctd.unique("deb")
    ctd.ok("create", name, "--template", debian, "--net", lan["name"], "--ram", "512M",
           *(["--privileged"] if privileged else []))
    try:
        root = ctd.rootfs(name)
        assert _device_nodes(root) == []
        os.mknod(root / "dev/console", stat.S_IFCHR | 0o666, os.makedev(5, 1))
        os.chmod(root / "dev/console", 0o666)
        shutil.copy2(probe, root / "usr/local/bin/probe")
        ctd.ok("start", name)
        state = system_state(ctd, name)
        failed = ctd.ctl("exec", name, "--", "systemctl", "--failed", "--no-legend", "--plain").out
        assert state == "running", f"{state}; failed units:\n{failed}"
        assert ctd.sh(name, "mkdir -p /mnt/r && mount --bind / /mnt/r").code == 0
        out = ctd.ctl("exec", name, "--", "probe", "opendev", "/mnt/r/dev/console").out.strip()
        assert out == "EACCES"
        assert ctd.sh(name, "mount -o remount,bind,dev /mnt/r").code == 0
        out = ctd.ctl("exec", name, "--", "probe", "opendev", "/mnt/r/dev/console").out.strip()
        assert out == "EPERM"
        # its own console (a pty of ctd's) is what /dev/console is inside
        assert ctd.ctl("exec", name, "--", "probe", "opendev", "/dev/console").out.strip() == "ok"
    finally:
        ctd.ctl("destroy", "--force", name)


def test_live_ipadd_and_ipdel_beside_networkds_own_default_route(ctd, vps, lan):
    """systemd-networkd adds its own default route (proto static) beside ctd's: a live --ipadd
    once died there (EEXIST replacing the default route) with 'internal error'."""
    name = vps()
    system_state(ctd, name)
    routes_before = ctd.sh(name, "ip -4 route show default").out
    assert "proto static" in routes_before, routes_before   # the guest's own is there
    extra = str(ipaddress.ip_network(lan["subnet"])[200])
    ctd.ok("set", name, "--ipadd", extra)
    assert f"inet {extra}/" in ctd.sh(name, "ip -4 -o addr show dev eth0").out
    assert subprocess.run(["busybox", "ping", "-c1", "-W2", extra], capture_output=True).returncode == 0
    ctd.ok("set", name, "--ipdel", extra)
    assert extra not in ctd.sh(name, "ip -4 -o addr show dev eth0").out
    assert ctd.sh(name, "ip -4 route show default").out == routes_before   # the guest's routes stay
    assert extra not in ctd.instance(name)["nics"][0]["addresses"]
    assert subprocess.run(["busybox", "ping", "-c1", "-W2", address(ctd, name)], capture_output=True).returncode == 0


def test_suspend_and_resume_a_systemd_container(ctd, vps, key):
    """A booted Debian (systemd, its own sub-cgroups) freezes whole: ssh gets no answer while it
    is suspended, and after resume systemd and sshd carry on; a stop of a suspended one is clean."""
    name = vps()
    assert system_state(ctd, name) in ("running", "degraded")
    ip = address(ctd, name)
    assert ssh(key, ip, "true").returncode == 0
    ctd.ok("suspend", name)
    freezer = Path(ctd.instance(name)["cgroups"]["freezer"])
    states = {p.read_text().strip() for p in freezer.rglob("freezer.state")}
    assert states == {"FROZEN"}, states
    frozen = subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
                             "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3",
                             f"root@{ip}", "true"], capture_output=True, text=True, timeout=30)
    assert frozen.returncode != 0, "sshd answered while suspended"
    ctd.ok("resume", name)
    assert system_state(ctd, name) in ("running", "degraded")
    assert ssh(key, ip, "systemctl is-active ssh").stdout.strip() == "active"
    ctd.ok("suspend", name)
    began = time.monotonic()
    ctd.ok("stop", "--timeout", "20", name)
    took = time.monotonic() - began
    assert took < 10, f"stop of a suspended systemd container took {took:.1f} s"
    assert ctd.instance(name)["state"] == "stopped"
