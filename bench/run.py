#!/usr/bin/env python3
"""ctd vs crun vs LXC, side by side in one run, on one busybox root filesystem.

    sudo /work/main/.venv/bin/python bench/run.py [--quick]

(a) start latency, (b) a create -> start -> exec -> stop -> destroy cycle, (c) host memory per
running idle container; (net) iperf3 over ctd's bridge vs loopback and the start cost of a NIC,
(storage) create-from-template vs lxc-copy -s and cp -a, pool growth per container, (debian) a
systemd Debian 12 guest's boot time and memory next to LXC. See bench/README.md for what exactly
is timed. Results are printed as a table with ratios and written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (BenchError, breakdown_delta, container_shape, hierarchies, host_breakdown,  # noqa: E402
                    mem_sample, meminfo, memcg,
                    mounts_below, proc_rss, ratio, remove_cgroup_tree, summary, theil_sen)
from ctd_side import CtdDaemon  # noqa: E402
from peers import Crun, LoopBtrfs, Lxc, LxcSystem, ensure_installed, version  # noqa: E402
import debian_part  # noqa: E402
import net_part  # noqa: E402
import storage_part  # noqa: E402
import vm_part  # noqa: E402

TOOLS = ("ctd", "crun", "lxc")
PARTS = ("start", "cycle", "memory", "net", "storage", "debian", "vm")
CRUN_PARTS = {"start", "cycle", "memory"}  # the parts that need the crun agent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


# ====================================================================== (a) start latency

def bench_start(ctd: CtdDaemon, crun: Crun, lxc: Lxc, iterations: int, warmup: int) -> dict:
    """start -> (untimed) kill, many times; tools interleaved, order rotated every round."""
    name = "bench-lat"
    ctd.create(name)
    ctd.create(name + "-priv", privileged=True)
    crun.create(name)
    lxc.create(name)

    def ctd_once(n: str) -> float:
        t0 = time.perf_counter()
        ctd.start_ct(n)  # PUT .../state {"action": "start"}, then wait for the operation
        ms = ms_since(t0)
        ctd.stop_ct(n)
        return ms

    def crun_once() -> float:
        ms = crun.start(name)  # `crun run -d`, timed by the agent
        crun.force_delete(name)
        crun.close_consoles()
        return ms

    def lxc_once() -> float:
        ms = lxc.start(name)  # `lxc-start -d`
        lxc.stop(name)
        return ms

    runners = {"ctd": lambda: ctd_once(name), "ctd_privileged": lambda: ctd_once(name + "-priv"),
               "crun": crun_once, "lxc": lxc_once}
    keys = list(runners)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(warmup + iterations):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        for k in order:
            ms = runners[k]()
            if i >= warmup:
                samples[k].append(ms)
        if i % 10 == 0:
            log(f"  start latency: round {i + 1}/{warmup + iterations}")
    ctd.destroy(name)
    ctd.destroy(name + "-priv")
    crun.destroy(name)
    lxc.destroy(name)
    out = {k: {**summary(v), "samples_ms": [round(x, 3) for x in v]} for k, v in samples.items()}
    return out


# ====================================================================== (b) full cycle

STEPS = ("create", "start", "exec", "stop", "destroy")


def bench_cycle(ctd: CtdDaemon, crun: Crun, lxc: Lxc, iterations: int) -> dict:
    samples = {t: {s: [] for s in STEPS + ("total",)} for t in TOOLS}

    def ctd_cycle(n: str) -> dict[str, float]:
        r = {}
        t0 = time.perf_counter(); ctd.create(n); r["create"] = ms_since(t0)  # noqa: E702
        t0 = time.perf_counter(); ctd.start_ct(n); r["start"] = ms_since(t0)  # noqa: E702
        t0 = time.perf_counter(); code = ctd.exec(n, ["/bin/true"]); r["exec"] = ms_since(t0)  # noqa: E702
        if code != 0:
            raise BenchError(f"ctd exec /bin/true in {n} exited {code}")
        t0 = time.perf_counter(); ctd.stop_ct(n); r["stop"] = ms_since(t0)  # noqa: E702
        t0 = time.perf_counter(); ctd.destroy(n); r["destroy"] = ms_since(t0)  # noqa: E702
        return r

    def crun_cycle(n: str) -> dict[str, float]:
        r = {}
        t0 = time.perf_counter(); crun.create(n); r["create"] = ms_since(t0)  # noqa: E702
        r["start"] = crun.start(n)
        r["exec"] = crun.exec(n, ["/bin/true"])
        r["stop"] = crun.stop(n)
        t0 = time.perf_counter()
        crun.delete(n)
        crun.destroy(n)
        r["destroy"] = ms_since(t0)
        crun.close_consoles()
        return r

    def lxc_cycle(n: str) -> dict[str, float]:
        r = {}
        t0 = time.perf_counter(); lxc.create(n); r["create"] = ms_since(t0)  # noqa: E702
        r["start"] = lxc.start(n)
        r["exec"] = lxc.exec(n, ["/bin/true"])
        r["stop"] = lxc.stop(n)
        t0 = time.perf_counter(); lxc.destroy(n); r["destroy"] = ms_since(t0)  # noqa: E702
        return r

    runners = {"ctd": ctd_cycle, "crun": crun_cycle, "lxc": lxc_cycle}
    for t in TOOLS:  # one untimed cycle each: first-use costs (imports, page cache) stay out
        runners[t]("bench-cyc-warm")
    for i in range(iterations):
        order = list(TOOLS[i % 3:] + TOOLS[:i % 3])
        for t in order:
            r = runners[t](f"bench-cyc-{i}")
            r["total"] = sum(r[s] for s in STEPS)
            for k, v in r.items():
                samples[t][k].append(v)
        if i % 5 == 0:
            log(f"  cycle: round {i + 1}/{iterations}")
    return {t: {k: summary(v) for k, v in steps.items()} for t, steps in samples.items()}


# ====================================================================== (c) memory

# ctd's containers are unprivileged (user namespace); crun's default spec has none. Both ways
# are measured for each, so each pair compares like with like.
MEMORY_TOOLS = ("ctd", "ctd_privileged", "crun", "crun_userns", "lxc")
# what can never be reclaimed while the containers run, from /proc/meminfo: the steadiest figure
# on a shared host (the page cache and reclaimable slab that others' work moves are left out)
CORE_FIELDS = ("AnonPages", "Shmem", "PageTables", "KernelStack", "Percpu", "SUnreclaim")


@dataclass
class MemTool:
    label: str
    runtime: object  # its init_pid(name) finds a container's init
    create: Callable[[str], object]
    start: Callable[[str], object]
    stop: Callable[[str], object]
    destroy: Callable[[str], object]
    cgroup_dir: str
    after_stop: Callable[[], object] = lambda: None  # crun: the agent lets go of the consoles
    names: list[str] = field(default_factory=list)


def memory_tools(ctd: CtdDaemon, crun: Crun, crun_userns: Crun, lxc: Lxc) -> list[MemTool]:
    return [
        MemTool("ctd", ctd, ctd.create, ctd.start_ct, ctd.stop_ct, ctd.destroy, ctd.cgroup_name),
        MemTool("ctd_privileged", ctd, lambda n: ctd.create(n, privileged=True), ctd.start_ct, ctd.stop_ct,
                ctd.destroy, ctd.cgroup_name),
        MemTool("crun", crun, crun.create, crun.start, crun.force_delete, crun.destroy, crun.cgroup_dir,
                crun.close_consoles),
        MemTool("crun_userns", crun_userns, crun_userns.create, crun_userns.start, crun_userns.force_delete,
                crun_userns.destroy, crun_userns.cgroup_dir, crun_userns.close_consoles),
        MemTool("lxc", lxc, lxc.create, lxc.start, lxc.stop, lxc.destroy, lxc.cgroup_dir),
    ]


def bench_memory(tools: list[MemTool], ctd: CtdDaemon, lxc: Lxc, count: int, rounds: int, settle: float,
                 hier) -> dict:  # type: ignore[no-untyped-def]
    """Create COUNT containers per tool once, then ROUNDS times, one tool after the other (the
    order rotated each round, so the host's drift falls on all alike): start its containers,
    let them idle, read the host's and our cgroup's memory, stop them. Per-container figures:
    median over rounds."""
    per_round: dict[str, list[dict]] = {t.label: [] for t in tools}
    create_s: dict[str, float] = {}
    try:
        for t in tools:
            t0 = time.perf_counter()
            for i in range(count):
                name = f"bm-{t.label.replace('_', '-')}-{i:03d}"
                t.create(name)
                t.names.append(name)
            create_s[t.label] = ms_since(t0) / 1000
            # one untimed start/stop first: code paths of the daemon, binaries in the page cache
            t.start(t.names[0])
            t.stop(t.names[0])
            t.after_stop()
        for r in range(rounds):
            order = tools[r % len(tools):] + tools[:r % len(tools)]
            for t in order:
                res = _memory_round(t, ctd, lxc, settle, hier)
                per_round[t.label].append(res)
                log(f"    round {r + 1}/{rounds} {t.label}: MemAvailable {res['host_MemAvailable_kb']:.0f}, "
                    f"used {res['host_used_kb']:.0f}, core {res['host_core_kb']:.0f}, our cgroup {res['memcg_usage_kb']:.0f} kB per container")
    finally:
        for t in tools:
            for n in t.names:
                t.destroy(n)
    return {t.label: _memory_summary(per_round[t.label], count, create_s[t.label]) for t in tools}


def _memory_summary(per_round: list[dict], count: int, create_s: float) -> dict:
    out: dict = {"count": count, "rounds": len(per_round), "create_all_s": create_s}
    for key in per_round[0]:
        values = [p[key] for p in per_round if p.get(key) is not None]
        if values and isinstance(values[0], dict):  # per-field medians (the last round's fields)
            out[key] = {k: statistics.median(v.get(k, 0) for v in values) for k in values[-1]}
            continue
        out[key] = statistics.median(values) if values else None
    # The first start of a container also reads its binaries into the page cache; later rounds
    # restart the same containers and find them there.
    out["first_round_memcg_cache_kb"] = per_round[0]["memcg_cache_kb"]
    out["per_round"] = per_round
    return out


def _memory_round(t: MemTool, ctd: CtdDaemon, lxc: Lxc, settle: float, hier) -> dict:  # type: ignore[no-untyped-def]
    names, n = t.names, len(t.names)
    is_ctd, is_lxc = t.label.startswith("ctd"), t.label == "lxc"
    time.sleep(settle)
    before = mem_sample()
    parts0 = host_breakdown()
    cg0, tool0 = memcg(hier), memcg(hier, t.cgroup_dir)
    rss0 = ctd.rss() if is_ctd else None
    avail_series = [meminfo()["MemAvailable"]]
    cg_series = [cg0["usage"] / 1024]
    started: list[str] = []
    try:
        t0 = time.perf_counter()
        for name in names:
            t.start(name)
            started.append(name)
            avail_series.append(meminfo()["MemAvailable"])
            cg_series.append(memcg(hier)["usage"] / 1024)
        start_s = ms_since(t0) / 1000
        time.sleep(settle)
        after = mem_sample()
        parts1 = host_breakdown()
        cg1, tool1 = memcg(hier), memcg(hier, t.cgroup_dir)
        rss1 = ctd.rss() if is_ctd else None
        monitors = sum(proc_rss(p)["VmRSS"] for p in lxc.monitor_pids()) if is_lxc else None
        shape = container_shape(t.runtime.init_pid(names[0]))
    finally:
        t0 = time.perf_counter()
        for name in started:
            t.stop(name)
        stop_s = ms_since(t0) / 1000
        t.after_stop()
    time.sleep(settle)
    cleaned = mem_sample()
    cg2 = memcg(hier)
    slope = theil_sen(avail_series)
    out = {
        "start_all_s": start_s, "stop_all_s": stop_s,
        # the host: everything, everybody's (noisy on a shared machine)
        "host_MemAvailable_kb": (before["MemAvailable"] - after["MemAvailable"]) / n,
        "host_MemFree_kb": (before["MemFree"] - after["MemFree"]) / n,
        "host_breakdown_kb": breakdown_delta(parts0, parts1, n),
        "host_used_kb": (after["used"] - before["used"]) / n,
        "host_core_kb": sum(parts1.get(k, 0) - parts0.get(k, 0) for k in CORE_FIELDS) / n,
        "host_used_noise_kb": max(before["spread_used_kb"], after["spread_used_kb"]),
        "host_MemAvailable_slope_kb": -slope if slope is not None else None,
        "host_noise_kb": max(before["spread_kb"], after["spread_kb"]),
        "host_not_returned_kb": before["MemAvailable"] - cleaned["MemAvailable"],
        # our own memory cgroup: this benchmark's processes only (ctd + spawner, containers,
        # LXC monitors, the crun agent), user + page cache + charged kernel memory
        "memcg_usage_kb": (cg1["usage"] - cg0["usage"]) / 1024 / n,
        "memcg_kmem_kb": (cg1["kmem"] - cg0["kmem"]) / 1024 / n,
        "memcg_anon_kb": (cg1["total_rss"] - cg0["total_rss"]) / 1024 / n,
        "memcg_cache_kb": (cg1["total_cache"] - cg0["total_cache"]) / 1024 / n,
        "memcg_nocache_kb": ((cg1["usage"] - cg1["total_cache"]) - (cg0["usage"] - cg0["total_cache"])) / 1024 / n,
        "memcg_slope_kb": theil_sen(cg_series),
        "memcg_not_returned_kb": (cg2["usage"] - cg0["usage"]) / 1024,
        # the tool's own cgroup directory (containers; LXC: its monitors too)
        "tool_cgroup_kb": (tool1["usage"] - tool0["usage"]) / 1024 / n,
    }
    if rss0 is not None and rss1 is not None:
        out["ctd_rss_kb"] = (rss1["daemon_VmRSS"] + rss1["spawner_VmRSS"]
                             - rss0["daemon_VmRSS"] - rss0["spawner_VmRSS"]) / n
        out["ctd_rss_anon_kb"] = (rss1["daemon_RssAnon"] + rss1["spawner_RssAnon"]
                                  - rss0["daemon_RssAnon"] - rss0["spawner_RssAnon"]) / n
        out["ctd_daemon_VmRSS_after_kb"] = rss1["daemon_VmRSS"]
    if monitors is not None:
        out["lxc_monitor_rss_kb"] = monitors / n
    if shape:
        out["mounts_per_container"] = shape["mounts"]
        out["processes_per_container"] = shape["processes"]
    return out


# ====================================================================== report

def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_ratio(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}x" if abs(v) >= 100 else f"{v:.2f}x"


def report(res: dict) -> list[str]:
    lines = []
    m = res["meta"]
    lines.append(f"ctd bench ({'quick' if m['quick'] else 'full'}) {m['date']}  kernel {m['kernel']}, "
                 f"{m['cpus']} CPUs, load {m['loadavg_start']} -> {m['loadavg_end']}")
    st = m.get("ctd_storage") or {}
    lines.append(f"  ctd {m['ctd_commit']} (storage {st.get('driver', '?')}) | {m['crun_version']} | "
                 f"lxc {m['lxc_version']}" + (f" | {m['iperf3_version']}" if m.get("iperf3_version") else ""))
    verdicts = []

    if "start" in res:
        s = res["start"]
        lines.append("")
        lines.append(f"(a) start latency, ms ({s['ctd']['n']} runs each, interleaved; ratios of medians)")
        lines.append(f"  {'':40} {'mean':>7} {'median':>7} {'p90':>7} {'ctd/this':>9}")
        label = {"ctd": "ctd  PUT start -> op done (init exec'd)", "ctd_privileged": "ctd  --privileged (no userns)",
                 "crun": "crun run -d", "lxc": "lxc-start -d"}
        for k in ("ctd", "ctd_privileged", "crun", "lxc"):
            v = s[k]
            r = "" if k == "ctd" else fmt_ratio(ratio(s["ctd"]["median"], v["median"]))
            lines.append(f"  {label[k]:40} {fmt(v['mean']):>7} {fmt(v['median']):>7} {fmt(v['p90']):>7} {r:>9}")
        ok = s["ctd"]["median"] <= s["crun"]["median"]
        verdicts.append(f"start: ctd median {s['ctd']['median']:.1f} ms vs crun {s['crun']['median']:.1f} ms "
                        f"-> {'PASS' if ok else 'FAIL'} (target ctd <= crun)")

    if "cycle" in res:
        c = res["cycle"]
        lines.append("")
        lines.append(f"(b) create -> start -> exec /bin/true -> stop (kill) -> destroy, median ms "
                     f"({c['ctd']['total']['n']} cycles each)")
        lines.append(f"  {'':6}" + "".join(f"{s:>9}" for s in STEPS) + f"{'total':>9}")
        for t in TOOLS:
            lines.append(f"  {t:6}" + "".join(f"{fmt(c[t][s]['median']):>9}" for s in STEPS + ('total',)))
        for t in ("crun", "lxc"):
            lines.append(f"  ctd/{t:4}" + "".join(
                f"{fmt_ratio(ratio(c['ctd'][s]['median'], c[t][s]['median'])):>9}" for s in STEPS + ('total',)))

    if "memory" in res:
        lines += memory_report(res["memory"], verdicts)
    if "net" in res:
        lines += net_part.report(res["net"], verdicts)
    if "storage" in res:
        lines += storage_part.report(res["storage"], verdicts)
    if "debian" in res:
        lines += debian_part.report(res["debian"], verdicts)
    if "vm" in res:
        lines += vm_part.report(res["vm"], verdicts)
    if verdicts:
        lines.append("")
        lines.append("targets:")
        lines += [f"  {v}" for v in verdicts]
    return lines


MEMORY_PAIRS = (("ctd", "crun_userns", "both with a user namespace"),
                ("ctd_privileged", "crun", "neither"),
                ("ctd", "crun", "ctd's default vs crun's"))


def _round_range(v: dict, key: str) -> float:
    values = [r[key] for r in v.get("per_round", []) if r.get(key) is not None]
    return max(values) - min(values) if len(values) > 1 else 0.0


def _paired(mm: dict, a: str, b: str, key: str) -> str:
    """a - b within each round (the ways took turns, so a round's pair shared the host's state):
    the range says how far one round's comparison can be off."""
    diffs = [ra[key] - rb[key] for ra, rb in zip(mm[a]["per_round"], mm[b]["per_round"])
             if ra.get(key) is not None and rb.get(key) is not None]
    if len(diffs) < 2:
        return ""
    return f"; per round {min(diffs):+.0f}..{max(diffs):+.0f}"


def memory_report(mm: dict, verdicts: list[str]) -> list[str]:
    tools = [t for t in MEMORY_TOOLS if t in mm]
    first = mm[tools[0]]
    lines = ["", f"(c) memory per running idle container, kB ({first['count']} containers per tool, one tool "
                 f"at a time, taking turns; median of {first['rounds']} round(s))"]
    cols = [("host", "host_MemAvailable_kb"), ("used", "host_used_kb"), ("core", "host_core_kb"),
            ("memcg", "memcg_usage_kb"),
            ("-cache", "memcg_nocache_kb"), ("cache", "memcg_cache_kb"), ("kmem", "memcg_kmem_kb"),
            ("anon", "memcg_anon_kb"), ("daemon", None)]
    lines.append(f"  {'':20}" + "".join(f"{c:>8}" for c, _ in cols) + f"{'start N':>9}{'stop N':>8}{'noise':>8}")
    for t in tools:
        v = mm[t]
        cells = [f"{fmt(v.get(key) if key else v.get('ctd_rss_kb', v.get('lxc_monitor_rss_kb')), 0 if key else 1):>8}"
                 for _, key in cols]
        lines.append(f"  {t:20}" + "".join(cells) + f"{v['start_all_s']:>8.2f}s{v['stop_all_s']:>7.2f}s"
                     f"{v['host_noise_kb'] / 1024:>6.1f}MB")
    for a, b, _ in (*MEMORY_PAIRS, ("ctd", "lxc", "")):
        if a in mm and b in mm:
            lines.append(f"  {a + '/' + b:20}" + "".join(
                f"{fmt_ratio(ratio(mm[a][key], mm[b][key])):>8}" if key else f"{'':>8}" for _, key in cols))
    if first["rounds"] > 1:
        lines.append("  page cache on the first start (round 1): " + ", ".join(
            f"{t} {mm[t]['first_round_memcg_cache_kb']:.0f}" for t in tools) + " kB per container")
    for t in tools:
        parts = mm[t].get("host_breakdown_kb")
        if isinstance(parts, dict):
            lines.append(f"  {t} on the host, per container: " + ", ".join(
                f"{k.removeprefix('slab:')} {v:+.0f}" for k, v in parts.items()))
    lines.append("  one container has: " + ", ".join(
        f"{t} {mm[t].get('mounts_per_container', '?')} mounts/{mm[t].get('processes_per_container', '?')} processes"
        for t in tools))
    lines += [
        "  host: MemAvailable drop / N, the whole host (noisy while others work on the machine: see noise);",
        "  used: growth / N of free(1)'s used: MemTotal - MemFree - Buffers - Cached - SReclaimable, i.e.",
        "  what the host cannot take back (page cache and reclaimable slab left out: a ctd container's own",
        "  root, a btrfs snapshot, caches its files for itself, while crun and LXC here share one root);",
        "  core: growth / N of " + " + ".join(CORE_FIELDS) + ", never reclaimable: the steadiest;",
        "  memcg: growth of this run's own memory cgroup / N (ctd + spawner, containers, LXC monitors, crun",
        "  agents): -cache = without page cache (anon + charged kernel memory), cache = page cache, of",
        "  which kmem and anon are parts; daemon: ctd = VmRSS growth of ctd + spawner / N, lxc = RSS of",
        "  the [lxc monitor] processes / N; noise: largest spread of MemAvailable in a 1 s window",
    ]
    for label, key, noise_key in (("host MemAvailable", "host_MemAvailable_kb", "host_noise_kb"),
                                  ("host used (free(1))", "host_used_kb", "host_used_noise_kb"),
                                  ("host core", "host_core_kb", None),
                                  ("our memcg without page cache", "memcg_nocache_kb", None)):
        # per container: the largest 1 s spread seen over the N containers, or half the largest
        # spread of one way's figure between rounds (a VM's balloon or virtio-mem moves free
        # memory by tens of MB between rounds: identical runs differ by 200-500 kB/container)
        noise = max(max(mm[t].get(noise_key) or 0 for t in tools) / first["count"],
                    max(_round_range(mm[t], key) for t in tools) / 2) if noise_key else 0.0

        def verdict(ok: bool, x: float, y: float) -> str:
            if noise_key and (min(x, y) <= 0 or noise > 0.25 * min(x, y)):
                return f"INCONCLUSIVE (host noise {noise:.0f} kB per container)"
            return "PASS" if ok else "FAIL"
        parts = [f"{a} {mm[a][key]:.0f} vs {b} {mm[b][key]:.0f} ({why}{_paired(mm, a, b, key)}) -> "
                 f"{verdict(mm[a][key] <= mm[b][key], mm[a][key], mm[b][key])}"
                 for a, b, why in MEMORY_PAIRS if a in mm and b in mm]
        if "ctd" in mm and "lxc" in mm:
            c, x = mm["ctd"][key], mm["lxc"][key]
            parts.append(f"ctd vs lxc {x:.0f} -> {verdict(c <= 0.75 * x, c, x)} (well under: <= 0.75x)")
        verdicts.append(f"memory, {label} (target <= crun): " + "; ".join(parts))
    if "ctd" in mm:
        g = mm["ctd"]["ctd_rss_kb"]
        verdicts.append(f"ctd RSS growth {g:.1f} kB per container -> {'PASS' if g < 100 else 'FAIL'} "
                        f"(target < 100 kB)")
    return lines


def git_describe() -> str:
    r = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    commit = r.stdout.strip() or "?"
    d = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--untracked-files=no",
                        "--", "ctd", "cgroups"], capture_output=True, text=True)
    return commit + ("+dirty" if d.stdout.strip() else "")


# ====================================================================== main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ctd vs crun vs LXC: start latency, full cycle, memory per container")
    p.add_argument("--quick", action="store_true", help="small counts, under 2 minutes")
    p.add_argument("--iterations", type=int, help="start-latency runs per tool (default 100, quick 20)")
    p.add_argument("--cycles", type=int, help="full cycles per tool (default 30, quick 5)")
    p.add_argument("--containers", type=int, help="idle containers per tool for memory (default 100, quick 20)")
    p.add_argument("--rounds", type=int, help="memory rounds per tool (start all, measure, stop all; "
                   "default 3, quick 1)")
    p.add_argument("--only", choices=list(PARTS), action="append",
                   help="run only this part (repeatable)")
    p.add_argument("--net-starts", type=int, help="net: starts with and without a NIC (default 40, quick 20)")
    p.add_argument("--net-rounds", type=int, help="net: iperf3 rounds (default 3, quick 1)")
    p.add_argument("--net-seconds", type=float, help="net: seconds per iperf3 transfer (default 5, quick 2)")
    p.add_argument("--creates", type=int, help="storage: creates per method and template (default 20, quick 5)")
    p.add_argument("--density", type=int, help="storage: containers from one template for pool growth "
                   "(default 200, quick 50)")
    p.add_argument("--boots", type=int, help="debian: boots per tool after the first (default 5, quick 3)")
    p.add_argument("--debian-containers", type=int, help="debian: idle Debian containers per tool for memory "
                   "(default 20, quick 5)")
    p.add_argument("--vm-boots", type=int, help="vm: boots per way (ctd, by hand, microvm) after a warm-up "
                   "(default 5, quick 2)")
    p.add_argument("--vms", type=int, help="vm: idle VMs for memory (default 4, quick 2)")
    p.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                   help="where the scratch directory (ctd state, bundles) goes (default /var/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--storage", choices=["auto", "dir", "btrfs"],
                   help="ctd's storage_driver (default: ctd's own default)")
    a = p.parse_args(argv)
    a.iterations = a.iterations or (20 if a.quick else 100)
    a.cycles = a.cycles or (5 if a.quick else 30)
    a.containers = a.containers or (20 if a.quick else 100)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.warmup = 3
    a.settle = 1.0 if a.quick else 2.0
    a.net_starts = a.net_starts or (20 if a.quick else 40)
    a.net_rounds = a.net_rounds or (1 if a.quick else 3)
    a.net_seconds = a.net_seconds or (2.0 if a.quick else 5.0)
    a.creates = a.creates or (5 if a.quick else 20)
    a.density = a.density or (50 if a.quick else 200)
    a.boots = a.boots or (3 if a.quick else 5)
    a.debian_containers = a.debian_containers or (5 if a.quick else 20)
    a.debian_settle = 3.0 if a.quick else 5.0
    a.vm_boots = a.vm_boots or (2 if a.quick else 5)
    a.vms = a.vms or (2 if a.quick else 4)
    a.only = a.only or list(PARTS)
    return a


def _interrupt(signum, _frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py: run as root (sudo): it starts containers with ctd, crun and LXC", file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    tag = secrets.token_hex(3)
    scratch = Path(tempfile.mkdtemp(prefix=f"ctd-bench-{tag}-", dir=args.workdir))
    os.chmod(scratch, 0o711)
    ctd = CtdDaemon(scratch, tag, storage=args.storage)
    crun: Crun | None = None
    crun_userns: Crun | None = None
    lxc: Lxc | None = None
    extras = Extras(scratch, tag)
    vmb: vm_part.VmBench | None = None
    rc = 0
    t_start = time.monotonic()
    results: dict = {"meta": {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
        "kernel": platform.release(), "cpus": os.cpu_count(),
        "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3]),
        "iterations": args.iterations, "warmup": args.warmup, "cycles": args.cycles,
        "containers": args.containers, "ctd_commit": git_describe(),
    }}
    try:
        ensure_installed()
        results["meta"]["crun_version"] = version(["crun", "--version"])
        results["meta"]["lxc_version"] = version(["lxc-start", "--version"])
        if "net" in args.only:
            net_part.ensure_iperf3()
            results["meta"]["iperf3_version"] = version(["iperf3", "--version"])
        hier = hierarchies()
        extras.note_pivots(hier)
        log(f"scratch {scratch}; starting ctd (cgroup {ctd.cgroup_name}, ids from {ctd.idmap_base})")
        ctd.start()
        results["meta"]["ctd_storage"] = ctd.info.get("storage")
        log(f"ctd storage: {ctd.info.get('storage')}")
        rootfs = ctd.build_template()
        log(f"busybox rootfs {rootfs} (shared by crun and LXC)")
        crun = Crun(scratch, tag, rootfs, hier)
        if CRUN_PARTS & set(args.only):
            crun.start_agent()
        lxc = Lxc(scratch, tag, rootfs, hier)
        if "start" in args.only:
            log(f"(a) start latency: {args.warmup} warm-up + {args.iterations} runs per tool")
            results["start"] = bench_start(ctd, crun, lxc, args.iterations, args.warmup)
        if "cycle" in args.only:
            log(f"(b) full cycle: {args.cycles} per tool")
            results["cycle"] = bench_cycle(ctd, crun, lxc, args.cycles)
        if "memory" in args.only:
            crun_userns = Crun(scratch, tag, rootfs, hier, userns_base=ctd.idmap_base + 100_000_000)
            crun_userns.start_agent()
            log(f"(c) memory: {args.containers} idle containers per tool ({', '.join(MEMORY_TOOLS)}), "
                f"{args.rounds} round(s), tools taking turns")
            results["memory"] = bench_memory(memory_tools(ctd, crun, crun_userns, lxc), ctd, lxc,
                                             args.containers, args.rounds, args.settle, hier)
        if "net" in args.only:
            log("(net) iperf3 over a bridge of ours vs loopback; start with one NIC vs none")
            extras.iperf = net_part.Iperf(net_part.free_port(), args.net_seconds)
            results["net"] = net_part.bench_net(ctd, extras.iperf, tag, args.net_starts, args.net_rounds, log)
        if {"storage", "debian"} & set(args.only):
            extras.build_debian(ctd, hier)
        if "storage" in args.only:
            res = results["storage"] = {"create": []}
            for template in ("busybox", debian_part.TEMPLATE):
                log(f"(storage) create from {template}: {args.creates} per method (ctd, lxc-copy -s, cp -a)")
                res["create"].append(storage_part.bench_create(ctd, extras.lxc, template, args.creates, log))
            log(f"(storage) {args.density} containers from {debian_part.TEMPLATE}: pool growth")
            res["density"] = storage_part.bench_density(ctd, extras.lxc, debian_part.TEMPLATE, args.density, log)
        if "debian" in args.only:
            rt = debian_part.Runtimes(ctd, extras.lxc)
            res = results["debian"] = {}
            log(f"(debian) boot to running: first boot + {args.boots} per tool")
            res["boot"] = debian_part.bench_boot(rt, args.boots, log)
            res["memory"] = {}
            for tool in ("ctd", "lxc"):
                if "error" in res["boot"].get(tool, {}):
                    res["memory"][tool] = {"error": "LXC could not boot it (see above)"}
                    continue
                log(f"(debian) memory: {args.debian_containers} idle Debian containers ({tool})")
                res["memory"][tool] = debian_part.bench_memory(rt, tool, args.debian_containers,
                                                               args.debian_settle, hier, log)
        if "vm" in args.only:
            vm_part.which_qemu()
            vmb = vm_part.VmBench(ctd, scratch, log)
            res = results["vm"] = {"accel": vm_part.pick_accel()[0], "kvm_note": vm_part.host_note()}
            log(f"(vm) minimal Linux VM boot: 1 warm-up + {args.vm_boots} per way ({res['accel']})")
            res["boot"] = vm_part.bench_boot(vmb, args.vm_boots, log)
            log(f"(vm) memory: {args.vms} idle VMs")
            res["memory"] = vm_part.bench_memory(vmb, args.vms, 5.0, log)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        rc = 130
    except BenchError as exc:
        log(f"bench/run.py: {exc}")
        rc = 1
    except Exception as exc:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        log(f"bench/run.py: {type(exc).__name__}: {exc}")
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if vmb is not None:
            vmb.cleanup()
        errors = cleanup(ctd, [c for c in (crun, crun_userns) if c], lxc, hierarchies_or_empty(), extras)
        left_mounts = mounts_below(str(scratch))
        if left_mounts:
            errors.append(f"still mounted: {', '.join(left_mounts)}")
        for e in errors:
            log(f"cleanup: {e}")
        if not errors and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        elif errors:
            log(f"scratch directory kept: {scratch}")
            rc = rc or 1
    if rc == 0:
        results["meta"]["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
        results["meta"]["duration_s"] = round(time.monotonic() - t_start, 1)
        lines = report(results)
        print("\n".join(lines))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        results["report"] = lines
        args.output.write_text(json.dumps(results, indent=1) + "\n")
        log(f"\nresults: {args.output} ({results['meta']['duration_s']} s)")
    return rc


def hierarchies_or_empty():  # type: ignore[no-untyped-def]
    try:
        return hierarchies()
    except Exception:  # noqa: BLE001
        return []


class Extras:
    """What the net, storage and debian parts add: iperf3 processes, a btrfs of our own for LXC's
    btrfs containers (made on first use), the Debian template (built once per run)."""

    def __init__(self, scratch: Path, tag: str) -> None:
        self.scratch, self.tag = scratch, tag
        self.iperf: net_part.Iperf | None = None
        self.fs: LoopBtrfs | None = None
        self._lxc: LxcSystem | None = None
        self.hier = None
        self.debian_built = False
        self.pivots_before: set[str] = set()

    def note_pivots(self, hier) -> None:  # type: ignore[no-untyped-def]
        """LXC makes a cgroup "lxc.pivot" next to its containers' (below our own cgroup, or at a
        hierarchy root where our cgroup is the root) to step out of a cgroup it removes; remember
        which exist already, so clean-up removes only the ones this run made."""
        self.hier = hier
        self.pivots_before = {p for p in self._pivots(hier) if os.path.isdir(p)}

    @staticmethod
    def _pivots(hier) -> list[str]:  # type: ignore[no-untyped-def]
        return [os.path.join(h.own_dir, "lxc.pivot") for h in hier]

    def build_debian(self, ctd: CtdDaemon, hier) -> None:  # type: ignore[no-untyped-def]
        self.hier = hier
        if self.debian_built:
            return
        log(f"building the {debian_part.TEMPLATE} template (mmdebstrap, about a minute)")
        t0 = time.monotonic()
        last = [0.0]

        def progress(line: str) -> None:
            if time.monotonic() - last[0] > 15:
                last[0] = time.monotonic()
                log(f"  {line[:120]}")
        ctd.build_template(debian_part.TEMPLATE, progress=progress)
        log(f"  built in {time.monotonic() - t0:.0f} s")
        self.debian_built = True

    @property
    def lxc(self) -> LxcSystem:
        if self._lxc is None:
            self.fs = LoopBtrfs(self.scratch / "lxc-btrfs")
            self.fs.create()
            self._lxc = LxcSystem(self.scratch, self.tag, self.hier or hierarchies(), self.fs)
            log(f"LXC btrfs containers on our own loop btrfs {self.fs.root} ({self.fs.device})")
        return self._lxc

    def cleanup(self) -> list[str]:
        errors: list[str] = []
        if self.iperf is not None:
            errors += self.iperf.cleanup()
        if self._lxc is not None:
            errors += self._lxc.cleanup()
        if self.fs is not None and not errors:
            errors += self.fs.release()
        for p in self._pivots(self.hier or []):
            if p not in self.pivots_before and os.path.isdir(p):
                errors += [f"cgroup left: {x}" for x in remove_cgroup_tree(p)]
        return errors


def cleanup(ctd: CtdDaemon, cruns: list[Crun], lxc: Lxc | None, hier, extras: Extras) -> list[str]:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    for what, fn in (("extras", extras.cleanup), ("ctd", ctd.cleanup), *((c.name, c.cleanup) for c in cruns),
                     ("lxc", lxc.cleanup if lxc else None)):
        if fn is None:
            continue
        try:
            errors += fn()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{what}: {exc}")
    ctd_left = bool(ctd.created)
    try:
        ctd.stop()
    except Exception as exc:  # noqa: BLE001
        errors.append(f"stopping ctd: {exc}")
    errors += ctd.network_leftovers()
    if not ctd_left:
        errors += ctd.release_storage()
        # ctd removes its cgroup base on a clean shutdown; make sure nothing stayed.
        for h in hier:
            errors += [f"cgroup left: {p}" for p in remove_cgroup_tree(os.path.join(h.own_dir, ctd.cgroup_name))]
    return errors


if __name__ == "__main__":
    sys.exit(main())
