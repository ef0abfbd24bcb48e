"""The real Prometheus server (Debian's /usr/bin/prometheus) scrapes ctd's loopback listener;
its PromQL answers must be what `ctctl status` and `ctctl beancounters` show.

Traffic: Prometheus and ctd on 127.0.0.1, and pings between a container and its own gateway.
"""
from __future__ import annotations

import http.client
import json
import random
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon, _start_daemon, _teardown
from tests.security.test_remote_access import free_port, https, make_token

MiB = 1 << 20


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    metrics_port, https_port = free_port(), free_port()
    d = _start_daemon(tmp_path_factory.mktemp("metrics"), "metrics",
                      f'metrics_address = "127.0.0.1:{metrics_port}"\nhttps_address = "127.0.0.1:{https_port}"\n')
    d.metrics_port = metrics_port  # type: ignore[attr-defined]
    d.port = https_port  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        _teardown(d)


class Prometheus:
    """A Prometheus server of the test's own: temp config and storage, 127.0.0.1 only."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: ./setup.sh test installs it (Debian package prometheus)")
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: ctd\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n")
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        try:
            result = self.query(promql)
        except OSError:  # not listening yet
            return None
        assert len(result) <= 1, f"{promql} matched several series: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, expected: Any, timeout: float = 20) -> None:
        """Until the query answers `expected` (a value, or a callable giving it now)."""
        deadline = time.monotonic() + timeout
        seen = want = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited: {self.log.read_text()[-2000:]}")
            want = expected() if callable(expected) else expected
            seen = self.value(promql)
            if seen == want:
                return
            time.sleep(0.25)
        pytest.fail(f"{promql}: Prometheus says {seen}, ctctl says {want}\n{self.log.read_text()[-1500:]}")


@pytest.fixture
def prometheus(daemon: Daemon, tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, daemon.metrics_port)  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def unix_get(path: Path, target: str) -> str:
    """One HTTP/1.0 GET over ctd's unix socket; the body (asserting 200 text/plain)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: ctd\r\n\r\n".encode())
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200" and b"Content-Type: text/plain" in head, head
    return body.decode()


def status(d: Daemon, name: str) -> dict[str, Any]:
    return json.loads(d.ok("status", name, "--format", "json"))


def beancounter(d: Daemon, name: str, resource: str) -> dict[str, Any]:
    rows = json.loads(d.ok("beancounters", name, "--format", "json"))[0]["beancounters"]
    return next(r for r in rows if r["name"] == resource)


def test_prometheus_scrapes_what_ctctl_status_shows(daemon: Daemon, prometheus: Prometheus) -> None:
    name = daemon.unique("prom")
    ip = f"10.254.{random.randint(1, 250)}.{random.randint(2, 250)}"
    daemon.ok("create", name, "--template", "busybox", "--ram", "256M", "--numproc", "100", "--ipadd", ip)
    daemon.ok("start", name)
    assert daemon.sh(name, "for i in 1 2 3; do sleep 600 >/dev/null 2>&1 & done").code == 0
    assert daemon.sh(name, "ping -c3 -i0.2 -W2 169.254.0.1").code == 0

    sel = f'{{job="ctd",name="{name}",type="container"}}'
    prometheus.wait_for('up{job="ctd"}', 1.0, timeout=30)
    shown = status(daemon, name)
    assert shown["state"] == "running" and shown["usage"]["pids_current"] >= 4  # init and 3 sleeps
    prometheus.wait_for(f"ctd_instance_pids{sel}", lambda: status(daemon, name)["usage"]["pids_current"])
    prometheus.wait_for(f"ctd_instance_memory_limit_bytes{sel}", 256.0 * MiB)
    assert shown["limits"]["ram"] == "256M"
    numproc = beancounter(daemon, name, "numproc")
    assert numproc["limit"] == 100
    prometheus.wait_for(f'ctd_instance_beancounter_limit{{job="ctd",name="{name}",resource="numproc"}}', 100.0)
    prometheus.wait_for(f'ctd_instance_beancounter_held{{job="ctd",name="{name}",resource="numproc"}}',
                        lambda: float(beancounter(daemon, name, "numproc")["held"]))
    prometheus.wait_for(f'ctd_instance_state{{job="ctd",name="{name}",state="running"}}', 1.0)
    prometheus.wait_for(f'ctd_instance_nic_transmit_bytes_total{{job="ctd",name="{name}",nic="eth0"}}',
                        lambda: float(status(daemon, name)["nics"][0]["tx_bytes"]))
    assert status(daemon, name)["nics"][0]["tx_packets"] >= 3  # the pings
    prometheus.wait_for('ctd_instances{job="ctd",type="container",state="running"}',
                        lambda: float(sum(i["state"] == "running" and i["type"] == "container"
                                          for i in daemon.client.get("/1.0/instances")["instances"])))

    daemon.ok("stop", name, "--kill")
    prometheus.wait_for(f'ctd_instance_state{{job="ctd",name="{name}",state="stopped"}}', 1.0)
    prometheus.wait_for(f"ctd_instance_running{sel}", 0.0)
    daemon.ok("destroy", name)


def test_loopback_listener_serves_only_metrics(daemon: Daemon) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.metrics_port, timeout=10)  # type: ignore[attr-defined]
    try:
        for path in ("/1.0/instances", "/1.0", "/1.0/metrics"):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 404 and b"instances" not in body, path
        conn.request("POST", "/metrics", body=b"{}")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 405
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(resp.read().decode())}
        assert {"ctd_instances", "ctd_build_info", "ctd_uptime_seconds"} <= names
    finally:
        conn.close()


def test_api_metrics_on_the_socket_and_on_https_only_with_a_token(daemon: Daemon) -> None:
    name = daemon.unique("secret")
    daemon.ok("create", name, "--template", "busybox")
    try:
        body = unix_get(daemon.socket, "/1.0/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert any(s.labels.get("name") == name for s in families["ctd_instance_state"].samples)

        printed = daemon.ok("metrics", name)  # ctctl metrics NAME: that instance's samples only
        samples = [s for f in text_string_to_metric_families(printed) for s in f.samples]
        assert samples and all(s.labels["name"] == name for s in samples)
        assert any(s.name == "ctd_instance_state" and s.labels["state"] == "stopped" and s.value == 1
                   for s in samples)
        assert "ctd_uptime_seconds" in daemon.ok("metrics")

        status_code, _, refused = https(daemon, "GET", "/1.0/metrics")
        assert status_code == 401 and name.encode() not in refused
        token = make_token(daemon, daemon.unique("scraper"))
        status_code, headers, served = https(daemon, "GET", "/1.0/metrics", token=token)
        assert status_code == 200 and headers["Content-Type"].startswith("text/plain")
        assert name.encode() in served
    finally:
        daemon.ok("destroy", name)


def test_a_taken_metrics_port_stops_ctd_before_it_touches_anything(tmp_path: Path) -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    d = Daemon(tmp_path / "state", tmp_path / "ctd.sock", f"ctd-test-{uuid.uuid4().hex[:8]}",
               extra_config=f'metrics_address = "127.0.0.1:{port}"\n')
    try:
        with pytest.raises(RuntimeError, match=f"cannot listen on metrics_address 127.0.0.1:{port}"):
            d.start()
        assert d.proc is not None and d.proc.returncode == 1
        assert not d.cgroup_dirs() and not d.socket.exists()
        assert not (d.state_dir / "ctd.db").exists()  # no state made
        assert str(d.state_dir) not in Path("/proc/self/mountinfo").read_text()
    finally:
        holder.close()
        if d.proc and d.proc.poll() is None:
            d.stop()
        if d.cgroup_dirs() or str(d.state_dir) in Path("/proc/self/mountinfo").read_text():
            d.extra_config = ""  # it got as far as making things: a ctd on the same state removes them
            d.start()
            _teardown(d)
