"""Prometheus metrics: one collector that reads ctd's current view of every instance at scrape
time (the list cache's kept views: ctd/instance/listing.py; nothing more to keep in sync),
rendered by prometheus-client in a worker thread."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from prometheus_client import exposition, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cgroups import CgroupError
from ctd import validate
from ctd.errors import CtdError, InvalidRequest
from ctd.instance.shapes import BeancounterRow
from ctd.state import InstanceRecord, InstanceType, PowerState

log = logging.getLogger("ctd.metrics")
# The text format every Prometheus reads (our names are plain ASCII, so the text is the same).
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
UNLIMITED = (1 << 63) - 1  # what beancounter rows say for "no limit" (LONG_MAX, as OpenVZ)
INSTANCE = ["name", "type"]


class InstanceSource(Protocol):
    """What the collector reads: InstanceManager, or a fake in unit tests."""

    def view(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any]: ...
    def beancounters(self, rec: InstanceRecord) -> list[BeancounterRow]: ...


@dataclass(frozen=True)
class MetricsAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_metrics_address(text: object) -> MetricsAddress:
    """"127.0.0.1:9420" or "[::1]:9420". Loopback only: the listener has no authentication and
    its text names every instance; remote scrapers use /1.0/metrics on HTTPS with a token."""
    address, port = validate.ip_and_port("metrics_address", text, "127.0.0.1:9420")
    if not address.is_loopback:
        raise InvalidRequest(f"metrics_address {text!r}: only a loopback address (127.0.0.1 or [::1]) is allowed: "
                             "this listener has no authentication and names every instance; scrape /1.0/metrics "
                             "over the HTTPS listener with a token from another machine")
    return MetricsAddress(str(address), port)


def _limit_value(value: int) -> float:
    return math.inf if value >= UNLIMITED else float(value)


def process_start_time() -> float | None:
    """When this process started (seconds since the epoch), from /proc."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[19])  # field 22, counted after the command name
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def process_rss() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def host_memory() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"):
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


class Families:
    """Metric families by name, created on first use, yielded in creation order."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def gauge(self, name: str, doc: str, labels: list[str], unit: str = "") -> GaugeMetricFamily:
        if name not in self._by_name:
            self._by_name[name] = GaugeMetricFamily(name, doc, labels=labels, unit=unit)
        return self._by_name[name]  # type: ignore[return-value]

    def counter(self, name: str, doc: str, labels: list[str], unit: str = "") -> CounterMetricFamily:
        if name not in self._by_name:
            self._by_name[name] = CounterMetricFamily(name, doc, labels=labels, unit=unit)
        return self._by_name[name]  # type: ignore[return-value]

    def add(self, family: Metric) -> None:
        self._by_name[family.name] = family

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())


# (usage key, metric name, help, counter?) for figures of the cgroup's usage (what status shows)
USAGE_FIGURES: list[tuple[str, str, str, bool]] = [
    ("cpu_seconds", "ctd_instance_cpu_seconds", "CPU time used by the instance's cgroup", True),
    ("cpu_throttled_seconds", "ctd_instance_cpu_throttled_seconds", "time the cgroup was throttled by cpulimit",
     True),
    ("memory_current", "ctd_instance_memory_usage_bytes", "memory charged to the instance now", False),
    ("memory_peak", "ctd_instance_memory_peak_bytes", "highest memory charged since it started", False),
    ("oom_kills", "ctd_instance_oom_kills", "processes the OOM killer ended in the instance", True),
    ("swap_current", "ctd_instance_swap_usage_bytes", "swap used by the instance now", False),
    ("pids_current", "ctd_instance_pids", "processes and threads in the instance", False),
]
IO_FIGURES = [("io_read_bytes", "read"), ("io_write_bytes", "write")]
IO_OPS = [("io_read_ios", "read"), ("io_write_ios", "write")]
NIC_FIGURES = [("rx_bytes", "ctd_instance_nic_receive_bytes", "bytes the instance received"),
               ("tx_bytes", "ctd_instance_nic_transmit_bytes", "bytes the instance sent"),
               ("rx_packets", "ctd_instance_nic_receive_packets", "packets the instance received"),
               ("tx_packets", "ctd_instance_nic_transmit_packets", "packets the instance sent"),
               ("rx_dropped", "ctd_instance_nic_receive_drops", "received packets dropped (this run)"),
               ("tx_dropped", "ctd_instance_nic_transmit_drops", "packets to send that were dropped (this run)")]
BEANCOUNTER_FIELDS: tuple[Literal["held", "maxheld", "barrier", "limit"], ...] = ("held", "maxheld", "barrier", "limit")


@dataclass(frozen=True)
class Snapshot:
    """What one scrape shows, taken on the event loop (the state database's thread): the rows,
    and the list cache's kept views (their JSON: parsed in the render's thread)."""

    records: list[InstanceRecord]
    kept: dict[int, bytes]


class CtdCollector(Collector):
    """Everything `ctctl status`, `ctctl beancounters` and `GET /1.0` show, as metric families."""

    def __init__(self, instances: InstanceSource, records: Callable[[], list[InstanceRecord]],
                 info: dict[str, Any]) -> None:
        self.instances = instances
        self.records = records
        self.info = info
        self.started_at = process_start_time() or time.time()
        self.snapshot: Snapshot | None = None   # set by MetricsExporter.scrape for its render

    def collect(self) -> Iterable[Metric]:
        families = Families()
        snapshot = self.snapshot
        records = snapshot.records if snapshot is not None else self.records()
        self._kept = snapshot.kept if snapshot is not None else {}
        for rec in records:
            try:
                self._instance(families, rec)
            except (CtdError, CgroupError, OSError, ValueError) as exc:  # it stopped or went mid-scrape
                log.debug("metrics of %s skipped: %s", rec.name, exc)
        self._daemon(families, records)
        return list(families)

    # ------------------------------------------------------------- per instance

    def _instance(self, families: Families, rec: InstanceRecord) -> None:
        body = self._kept.get(rec.id)
        view = json.loads(body) if body is not None else self.instances.view(rec, cached=True)
        labels = [rec.name, rec.type.value]
        families.gauge("ctd_instance_info", "one per instance; its id and template as labels",
                       INSTANCE + ["id", "template"]).add_metric(labels + [str(rec.id), rec.template or ""], 1)
        state = families.gauge("ctd_instance_state", "1 for the instance's current state, 0 for the others",
                               INSTANCE + ["state"])
        for power in PowerState:
            state.add_metric(labels + [power.value], float(view["state"] == power.value))
        families.gauge("ctd_instance_running", "1 when the instance runs", INSTANCE).add_metric(
            labels, float(view["state"] == PowerState.RUNNING.value))
        families.gauge("ctd_instance_disabled", "1 when the instance is disabled (it cannot be started)",
                       INSTANCE).add_metric(labels, float(rec.disabled))
        families.gauge("ctd_instance_protected", "1 when destroy, reinstall and rollback are refused",
                       INSTANCE).add_metric(labels, float(rec.protected))
        families.gauge("ctd_instance_suspended", "1 when the instance is suspended (frozen / vCPUs stopped)",
                       INSTANCE).add_metric(labels, float(view["state"] == PowerState.SUSPENDED.value))
        limits = families.gauge("ctd_instance_limit", "a configured limit (bytes, counts, percent or "
                                "weight, as in ctctl set); absent = unlimited", INSTANCE + ["resource"])
        for resource, value in sorted(rec.limits.items()):
            if isinstance(value, int) and not isinstance(value, bool):
                limits.add_metric(labels + [resource], value)
        if "ram" in rec.limits:
            families.gauge("ctd_instance_memory_limit_bytes", "memory limit (ram)", INSTANCE).add_metric(
                labels, rec.limits["ram"])
        if "swap" in rec.limits:
            families.gauge("ctd_instance_swap_limit_bytes", "swap limit", INSTANCE).add_metric(
                labels, rec.limits["swap"])
        if "numproc" in rec.limits:
            families.gauge("ctd_instance_pids_limit", "process limit (numproc)", INSTANCE).add_metric(
                labels, rec.limits["numproc"])
        self._usage(families, labels, view.get("usage"))
        disk = view.get("disk")
        if disk:
            families.gauge("ctd_instance_disk_used_bytes", "space the root filesystem uses",
                           INSTANCE).add_metric(labels, disk["used"])
            if disk.get("limit"):
                families.gauge("ctd_instance_disk_limit_bytes", "quota of the root filesystem (diskspace)",
                               INSTANCE).add_metric(labels, disk["limit"])
        for nic in view.get("nics") or []:
            nic_labels = labels + [nic["name"], nic.get("host_name") or ""]
            for key, name, doc in NIC_FIGURES:
                if nic.get(key) is not None:
                    families.counter(name, doc, INSTANCE + ["nic", "host_nic"]).add_metric(nic_labels, nic[key])
        if rec.type is InstanceType.CONTAINER and view["state"] in (PowerState.RUNNING.value,
                                                                      PowerState.SUSPENDED.value):
            self._beancounters(families, labels, self.instances.beancounters(rec))

    def _usage(self, families: Families, labels: list[str], usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        for key, name, doc, counter in USAGE_FIGURES:
            if usage.get(key) is None:
                continue
            family = families.counter(name, doc, INSTANCE) if counter else families.gauge(name, doc, INSTANCE)
            family.add_metric(labels, usage[key])
        for figures, name, doc in ((IO_FIGURES, "ctd_instance_io_bytes", "bytes read/written on block devices"),
                                   (IO_OPS, "ctd_instance_io_ops", "read/write operations on block devices")):
            for key, direction in figures:
                if usage.get(key) is not None:
                    families.counter(name, doc, INSTANCE + ["direction"]).add_metric(
                        labels + [direction], usage[key])

    def _beancounters(self, families: Families, labels: list[str], rows: list[BeancounterRow]) -> None:
        for row in rows:
            row_labels = labels + [row["name"]]
            for field in BEANCOUNTER_FIELDS:
                value = row[field] if field in ("held", "maxheld") else _limit_value(row[field])
                families.gauge(f"ctd_instance_beancounter_{field}",
                               f"beancounter {field} (as ctctl beancounters; +Inf = unlimited)",
                               INSTANCE + ["resource"]).add_metric(row_labels, value)
            families.gauge("ctd_instance_beancounter_failcnt", "times the resource hit its limit",
                           INSTANCE + ["resource"]).add_metric(row_labels, row["failcnt"])
            if row["name"] == "numfile":
                families.gauge("ctd_instance_open_files", "open file descriptors of the instance's processes",
                               INSTANCE).add_metric(labels, row["held"])

    # ------------------------------------------------------------- ctd and the host

    def _daemon(self, families: Families, records: list[InstanceRecord]) -> None:
        counts = families.gauge("ctd_instances", "instances by type and state", ["type", "state"])
        for kind in InstanceType:
            for power in PowerState:
                counts.add_metric([kind.value, power.value],
                                  sum(1 for r in records if r.type is kind and r.state is power))
        build = InfoMetricFamily("ctd_build", "ctd's version", value={
            "version": str(self.info.get("version", "")), "api": str(self.info.get("api", "")),
            "kernel": str(self.info.get("kernel", "")),
            "storage": str((self.info.get("storage") or {}).get("driver", "")),
            "cgroup_version": str(self.info.get("cgroup_version", ""))})
        families.add(build)
        families.gauge("ctd_start_time_seconds", "when ctd started (Unix time)", []).add_metric([], self.started_at)
        families.gauge("ctd_uptime_seconds", "seconds since ctd started", []).add_metric(
            [], max(0.0, time.time() - self.started_at))
        rss = process_rss()
        if rss is not None:
            families.gauge("ctd_resident_memory_bytes", "ctd's own resident memory", []).add_metric([], rss)
        families.gauge("ctd_host_cpus", "CPUs of the host", []).add_metric([], os.cpu_count() or 0)
        memory = host_memory()
        for key, name in (("MemTotal", "ctd_host_memory_total_bytes"),
                          ("MemAvailable", "ctd_host_memory_available_bytes"),
                          ("SwapTotal", "ctd_host_swap_total_bytes"), ("SwapFree", "ctd_host_swap_free_bytes")):
            if key in memory:
                families.gauge(name, f"host {key} (/proc/meminfo)", []).add_metric([], memory[key])
        try:
            load = os.getloadavg()
            families.gauge("ctd_host_load1", "host load average over 1 minute", []).add_metric([], load[0])
        except OSError:
            pass


class MetricsExporter:
    """The registry with ctd's collector; scrape() renders it off the event loop, one at a time.
    kept: the list cache's views by instance id (ListCache.bodies), so a scrape builds no view
    of its own (with none, or for an instance not kept, the collector asks instances.view)."""

    def __init__(self, instances: InstanceSource, records: Callable[[], list[InstanceRecord]],
                 info: dict[str, Any], kept: Callable[[], Awaitable[dict[int, bytes]]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = CtdCollector(instances, records, info)
        self.registry.register(self.collector)
        self.kept = kept
        self._lock: asyncio.Lock | None = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        # Many scrapers at once share the work queue instead of each taking a thread.
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            kept = await self.kept() if self.kept is not None else {}
            self.collector.snapshot = Snapshot(self.collector.records(), kept)
            try:
                return await asyncio.to_thread(self.render)
            finally:
                self.collector.snapshot = None
