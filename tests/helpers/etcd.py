"""A real etcd member for tests: loopback, free ports, its data dir under the test's tmp,
stopped by its PID."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdMember:
    proc: subprocess.Popen[bytes]
    client_url: str
    log: Path

    def status(self) -> dict[str, object]:
        req = urllib.request.Request(f"{self.client_url}/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=2) as resp:
            answer: dict[str, object] = json.load(resp)
            return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_etcd(data_dir: Path, name: str = "ctd-test") -> EtcdMember:
    """One member on loopback (a one-member cluster: enough for membership and names)."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian: etcd-server; ./setup.sh installs it)")
    client, peer = free_port(), free_port()
    log = data_dir.parent / f"{data_dir.name}.log"
    proc = subprocess.Popen(
        ["etcd", "--name", name, "--data-dir", str(data_dir),
         "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"{name}=http://127.0.0.1:{peer}", "--initial-cluster-state", "new"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    member = EtcdMember(proc, f"http://127.0.0.1:{client}", log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited at start:\n{log.read_text()[-2000:]}")
        try:
            if member.status().get("leader"):
                return member
        except OSError:
            pass
        time.sleep(0.1)
    member.stop()
    raise RuntimeError("etcd did not elect itself leader within 20 s")
