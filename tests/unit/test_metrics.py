"""The Prometheus collector against a fake instance manager, the metrics_address setting, and
the loopback app (aiohttp's test client). The text is checked with prometheus-client's parser."""
from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ctd.api.metrics import loopback_app
from ctd.config import load_config
from ctd.errors import Conflict, InvalidRequest
from ctd.metrics import UNLIMITED, MetricsExporter, parse_metrics_address
from ctd.state import InstanceRecord, InstanceType, PowerState

MiB = 1 << 20


def record(id: int, name: str, kind: InstanceType, state: PowerState, limits: dict[str, int]) -> InstanceRecord:
    return InstanceRecord(id=id, name=name, type=kind, template="busybox", hostname=name, privileged=False,
                          idmap_base=None, limits=limits, state=state)


class FakeInstances:
    """What the collector calls on InstanceManager, with the shapes view() and beancounters() give."""

    def __init__(self) -> None:
        self.records = [
            record(100, "web", InstanceType.CONTAINER, PowerState.RUNNING, {"ram": 256 * MiB, "numproc": 100}),
            record(101, "db", InstanceType.VM, PowerState.STOPPED, {"ram": 1024 * MiB}),
            record(102, "gone", InstanceType.CONTAINER, PowerState.RUNNING, {}),
            record(103, "vanished", InstanceType.CONTAINER, PowerState.RUNNING, {}),
        ]
        self.view_calls = 0

    def view(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any]:
        assert cached, "a scrape reads the cached disk figures, as list does"
        self.view_calls += 1
        running = rec.state is PowerState.RUNNING
        return {
            "name": rec.name, "type": rec.type.value, "state": rec.state.value,
            "usage": {"cpu_seconds": 12.5, "cpu_throttled_seconds": None, "memory_current": 40 * MiB,
                      "memory_peak": 60 * MiB, "oom_kills": 0, "swap_current": 0, "pids_current": 7,
                      "io_read_bytes": 4096, "io_write_bytes": 8192, "io_read_ios": 3, "io_write_ios": 5,
                      } if running else None,
            "disk": {"used": 5 * MiB, "limit": 1024 * MiB if rec.name == "web" else None},
            "nics": [{"name": "eth0", "host_name": f"ve{rec.id}.0", "rx_bytes": 1000, "tx_bytes": 2000,
                      "rx_packets": 10, "tx_packets": 20, "rx_dropped": 1, "tx_dropped": 0}] if rec.name == "web" else [],
        }

    def beancounters(self, rec: InstanceRecord) -> list[dict[str, Any]]:
        if rec.name == "gone":
            raise Conflict("gone is not running: its counters live in its cgroup")  # stopped mid-scrape
        if rec.name == "vanished":
            raise FileNotFoundError(2, "No such file or directory", "memory.stat")  # its cgroup went
        return [{"name": "numproc", "held": 7, "maxheld": 9, "barrier": 100, "limit": 100, "failcnt": 3},
                {"name": "physpages", "held": 10240, "maxheld": 15360, "barrier": UNLIMITED, "limit": UNLIMITED,
                 "failcnt": 0},
                {"name": "numfile", "held": 42, "maxheld": 50, "barrier": UNLIMITED, "limit": UNLIMITED,
                 "failcnt": 0}]


def scrape(fake: FakeInstances) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    exporter = MetricsExporter(fake, lambda: fake.records, {"version": "9.9", "api": "1.0", "kernel": "6.1"})
    samples = {}
    for family in text_string_to_metric_families(exporter.render().decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_collector_reports_what_status_and_beancounters_show() -> None:
    s = scrape(FakeInstances())
    web = {"name": "web", "type": "container"}
    assert value(s, "ctd_instance_cpu_seconds_total", **web) == 12.5
    assert value(s, "ctd_instance_memory_usage_bytes", **web) == 40 * MiB
    assert value(s, "ctd_instance_memory_peak_bytes", **web) == 60 * MiB
    assert value(s, "ctd_instance_memory_limit_bytes", **web) == 256 * MiB
    assert value(s, "ctd_instance_pids", **web) == 7
    assert value(s, "ctd_instance_pids_limit", **web) == 100
    assert value(s, "ctd_instance_open_files", **web) == 42
    assert value(s, "ctd_instance_disk_used_bytes", **web) == 5 * MiB
    assert value(s, "ctd_instance_disk_limit_bytes", **web) == 1024 * MiB
    assert value(s, "ctd_instance_io_bytes_total", direction="write", **web) == 8192
    assert value(s, "ctd_instance_io_ops_total", direction="read", **web) == 3
    nic = {**web, "nic": "eth0", "host_nic": "ve100.0"}
    assert value(s, "ctd_instance_nic_receive_bytes_total", **nic) == 1000
    assert value(s, "ctd_instance_nic_transmit_packets_total", **nic) == 20
    assert value(s, "ctd_instance_nic_receive_drops_total", **nic) == 1
    assert value(s, "ctd_instance_beancounter_held", resource="numproc", **web) == 7
    assert value(s, "ctd_instance_beancounter_failcnt", resource="numproc", **web) == 3
    assert value(s, "ctd_instance_beancounter_limit", resource="numproc", **web) == 100
    assert value(s, "ctd_instance_beancounter_limit", resource="physpages", **web) == math.inf
    assert value(s, "ctd_instance_limit", resource="ram", **web) == 256 * MiB
    # no counter the cgroup does not have (None) is made up
    assert not any(k[0].startswith("ctd_instance_cpu_throttled") for k in s)


def test_states_and_counts_cover_stopped_instances_and_vms() -> None:
    fake = FakeInstances()
    fake.records[1].disabled = True
    s = scrape(fake)
    db = {"name": "db", "type": "vm"}
    assert value(s, "ctd_instance_running", **db) == 0
    assert value(s, "ctd_instance_disabled", **db) == 1 and value(s, "ctd_instance_disabled", name="web",
                                                                  type="container") == 0
    assert value(s, "ctd_instance_protected", **db) == 0
    assert value(s, "ctd_instance_state", state="stopped", **db) == 1
    assert value(s, "ctd_instance_state", state="running", **db) == 0
    assert value(s, "ctd_instance_memory_limit_bytes", **db) == 1024 * MiB
    assert ("ctd_instance_pids", tuple(sorted(db.items()))) not in s  # stopped: no usage
    assert value(s, "ctd_instance_running", name="web", type="container") == 1
    assert value(s, "ctd_instances", type="container", state="running") == 3
    assert value(s, "ctd_instances", type="vm", state="stopped") == 1
    assert value(s, "ctd_instances", type="vm", state="running") == 0


def test_an_instance_that_stops_mid_scrape_does_not_break_it() -> None:
    s = scrape(FakeInstances())
    gone = {"name": "gone", "type": "container"}
    assert value(s, "ctd_instance_pids", **gone) == 7  # what was read before it went
    for name in ("gone", "vanished"):
        assert not any(k[0] == "ctd_instance_beancounter_held" and ("name", name) in k[1] for k in s)
    assert value(s, "ctd_instance_beancounter_held", name="web", type="container", resource="numproc") == 7


def test_ctd_and_host_figures() -> None:
    s = scrape(FakeInstances())
    build = [k for k in s if k[0] == "ctd_build_info"]
    assert len(build) == 1 and ("version", "9.9") in build[0][1]
    assert value(s, "ctd_resident_memory_bytes") > MiB
    assert 0 <= value(s, "ctd_uptime_seconds") < 3600 * 24 * 365
    assert value(s, "ctd_host_memory_total_bytes") > value(s, "ctd_host_memory_available_bytes") > 0
    assert value(s, "ctd_host_cpus") >= 1


def test_instance_names_with_odd_characters_stay_in_their_label() -> None:
    fake = FakeInstances()
    fake.records[0].name = 'x"} evil 1\nctd_fake{a="b'  # names are validated; the library must escape anyway
    s = scrape(fake)
    assert not any(k[0] == "ctd_fake" for k in s)
    assert value(s, "ctd_instance_pids", name=fake.records[0].name, type="container") == 7


@pytest.mark.parametrize("text, host, port", [("127.0.0.1:9420", "127.0.0.1", 9420),
                                              ("127.0.0.5:1", "127.0.0.5", 1), ("[::1]:9420", "::1", 9420)])
def test_metrics_address_loopback(text: str, host: str, port: int) -> None:
    address = parse_metrics_address(text)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("text, said", [
    ("0.0.0.0:9420", "only a loopback address"), ("[::]:9420", "only a loopback address"),
    ("192.168.1.1:9420", "only a loopback address"), ("localhost:9420", "not an IP address"),
    ("127.0.0.1", "ADDRESS:PORT"), ("127.0.0.1:0", "port"), ("127.0.0.1:70000", "port"), (9420, "string")])
def test_metrics_address_refused(text: object, said: str) -> None:
    with pytest.raises(InvalidRequest, match=said):
        parse_metrics_address(text)


def test_config_file_with_a_public_metrics_address_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "ctd.toml"
    config.write_text('metrics_address = "0.0.0.0:9420"\n')
    with pytest.raises(InvalidRequest) as err:
        load_config(config, {})
    assert str(config) in err.value.message and "HTTPS" in err.value.message
    config.write_text('metrics_address = "127.0.0.1:9420"\n')
    assert load_config(config, {}).metrics_address == "127.0.0.1:9420"
    assert load_config(tmp_path / "none.toml", {}).metrics_address == ""  # off by default


def test_loopback_app_serves_only_metrics() -> None:
    fake = FakeInstances()
    exporter = MetricsExporter(fake, lambda: fake.records, {"version": "9.9"})

    async def t() -> None:
        async with TestClient(TestServer(loopback_app(exporter))) as client:
            resp = await client.get("/metrics")
            assert resp.status == 200 and resp.content_type == "text/plain"
            names = {f.name for f in text_string_to_metric_families(await resp.text())}
            assert "ctd_instance_pids" in names
            for path in ("/1.0/instances", "/1.0/metrics", "/1.0", "/"):
                assert (await client.get(path)).status == 404, path
            assert (await client.post("/metrics")).status == 405
            # scrapes at once run one after the other, each complete
            texts = await asyncio.gather(*(client.get("/metrics") for _ in range(5)))
            assert all(r.status == 200 for r in texts)

    asyncio.run(t())


def test_a_scrape_shows_the_kept_views_and_reads_the_rows_on_the_loop() -> None:
    """With the list cache's kept views (ListCache.bodies) a scrape builds no view of its own; the
    rows are read on the event loop's thread (the state database's), the text rendered off it."""
    import json
    import threading

    fake = FakeInstances()
    threads: dict[str, int] = {}

    def records() -> list[InstanceRecord]:
        threads["records"] = threading.get_ident()
        return fake.records

    async def kept() -> dict[int, bytes]:
        out = {}
        for rec in fake.records[:3]:   # "vanished" is not kept: asked of the manager
            view = fake.view(rec, cached=True)
            if rec.name == "web":
                view["usage"]["pids_current"] = 11   # the kept figure, not a new one
            out[rec.id] = json.dumps(view).encode()
        return out

    exporter = MetricsExporter(fake, records, {"version": "9.9"}, kept)

    async def t() -> tuple[bytes, int]:
        fake.view_calls = 0
        return await exporter.scrape(), threading.get_ident()

    text, loop_thread = asyncio.run(t())
    assert threads["records"] == loop_thread
    assert fake.view_calls == 3 + 1   # three by kept() above, one by the collector (vanished)
    samples = {(s.name, s.labels.get("name")): s.value
               for f in text_string_to_metric_families(text.decode()) for s in f.samples}
    assert samples[("ctd_instance_pids", "web")] == 11 and ("ctd_instance_running", "vanished") in samples
