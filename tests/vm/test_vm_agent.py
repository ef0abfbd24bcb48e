"""The guest agent and live snapshots of a booted Debian VM (TCG here; KVM where the host can).

Slow: one Debian guest boots twice (a few minutes under TCG on a busy 2-core host)."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow


def _ssh(key: Path | None, address: str, command: str, password: str | None = None,
         tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    opts = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20"]
    env = dict(os.environ)
    if password is not None:   # password login through SSH_ASKPASS (OpenSSH >= 8.4), no sshpass needed
        assert tmp is not None
        askpass = tmp / "askpass"
        askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
        askpass.chmod(stat.S_IRWXU)
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        opts += ["-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no"]
    else:
        assert key is not None
        opts += ["-i", str(key), "-o", "BatchMode=yes"]
    return subprocess.run(["ssh", *opts, f"root@{address}", command], capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)


def _wait_agent(ctd, name: str, deadline_s: float = 480) -> None:  # type: ignore[no-untyped-def]
    deadline, last = time.monotonic() + deadline_s, None
    while time.monotonic() < deadline:
        last = ctd.ctl("exec", name, "--", "true", timeout=60)
        if last.code == 0:
            return
        # until the guest's qemu-ga is up: a 409 naming what is missing
        assert "guest agent" in last.err, last.err
        time.sleep(3)
    raise AssertionError(f"the guest agent never answered: {last.err if last else ''}")


@pytest.mark.timeout(2400)
def test_debian_vm_agent_exec_password_ips_live_snapshot_rollback(ctd, debian, net, ssh_key, tmp_path):
    key = ssh_key
    name = ctd.unique("vma")
    try:
        ctd.ok("create", name, "--type", "vm", "--template", "debian-12", "--net", net, "--ram", "1G",
               "--disk", "2G", "--ssh-key", f"{key}.pub", timeout=300)
        # a stopped VM: exec and the agent are refused with what to do
        r = ctd.ctl("exec", name, "--", "true")
        assert r.code != 0 and "not running" in r.err, r.err
        ctd.ok("start", name)
        address = ctd.instance(name)["nics"][0]["addresses"][0]
        _wait_agent(ctd, name)

        # exec: stdout, stderr and the exit code, separately; a terminal is refused clearly
        r = ctd.ctl("exec", name, "--", "sh", "-c", "echo out-$(hostname); echo err >&2; exit 7")
        assert (r.code, r.out.strip(), r.err.strip()) == (7, f"out-{name}", "err"), r
        assert ctd.ctl("exec", "--cwd", "/etc", name, "--", "pwd").out.strip() == "/etc"
        r = ctd.ctl("exec", name, "--", "/no/such/program")
        assert r.code == 127, r
        r = ctd.ctl("exec", "-t", name, "--", "true")
        assert r.code != 0 and "-t" in r.err and "terminal" in r.err, r.err

        # the guest's addresses, as its agent sees them, in status
        deadline, guest_rows = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            guest_rows = [line for line in ctd.ok("status", name).splitlines()
                          if line.lstrip().startswith("guest ") and "guest agent" not in line]
            if any(address in line for line in guest_rows):
                break
            time.sleep(3)
        assert any(address in line for line in guest_rows), guest_rows

        # password reset on the running VM, then a password login over ssh with it
        ctd.ok("exec", name, "--", "sh", "-c", "echo 'PermitRootLogin yes' > /etc/ssh/sshd_config.d/ctd-test.conf"
               " && systemctl reload ssh")
        out = ctd.ok("set", name, "--userpasswd", "root:Agent-Set-9x", timeout=60)
        assert "set in the running guest by its agent" in out, out
        deadline = time.monotonic() + 180
        while True:   # sshd may still be starting on a busy TCG guest
            login = _ssh(None, address, "echo logged-in-as-$(id -un)", password="Agent-Set-9x", tmp=tmp_path)
            if login.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert login.stdout.strip() == "logged-in-as-root", login.stderr
        assert _ssh(None, address, "true", password="wrong-password", tmp=tmp_path).returncode != 0

        # a live snapshot while a file is being written: frozen by the agent, paused briefly
        ctd.ok("exec", name, "--", "sh", "-c",
               "setsid sh -c 'i=0; while :; do i=$((i+1)); echo line-$i >> /root/writing; sleep 0.1; done' "
               ">/dev/null 2>&1 < /dev/null &")
        time.sleep(3)
        out = ctd.ok("snapshot", name, "live1", timeout=120)
        assert "filesystems frozen" in out and "paused" in out, out
        assert ctd.instance(name)["state"] == "running"
        r = ctd.ctl("snapshot", name, "live1")
        assert r.code != 0 and "already has a snapshot" in r.err
        ctd.ok("exec", name, "--", "touch", "/root/after-snapshot")
        assert "live1" in ctd.ok("snapshot-list", name)
        # a running backup is frozen by the agent too
        out = ctd.ok("backup", name, str(tmp_path / "b.ctdbak"), timeout=600)
        assert "filesystems frozen" in out, out

        # ACPI ignored by the guest: the agent's guest-shutdown powers it off, no kill
        ctd.ok("exec", name, "--", "sh", "-c", "mkdir -p /etc/systemd/logind.conf.d && printf "
               "'[Login]\\nHandlePowerKey=ignore\\n' > /etc/systemd/logind.conf.d/ctd-test.conf && "
               "systemctl restart systemd-logind")
        time.sleep(2)
        out = ctd.ok("stop", "--timeout", "60", name, timeout=300)
        assert "forced" not in out, out
        assert ctd.instance(name)["state"] == "stopped"

        # rollback, boot: the disk as at the snapshot, its file whole, nothing written after it
        ctd.ok("rollback", name, "live1", timeout=120)
        ctd.ok("start", name)
        _wait_agent(ctd, name)
        assert ctd.ctl("exec", name, "--", "test", "-e", "/root/after-snapshot").code == 1
        lines = ctd.ok("exec", name, "--", "cat", "/root/writing").split()
        assert lines and all(line.startswith("line-") and line[5:].isdigit() for line in lines), lines[-3:]
        assert [int(x[5:]) for x in lines] == list(range(1, len(lines) + 1))
    finally:
        ctd.ctl("destroy", "--force", name, timeout=180)
