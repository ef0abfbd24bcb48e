"""(debian) A Debian 12 template with systemd: time from the start request until
`systemctl is-system-running --wait` says running, and memory per idle Debian container with N
running; ctd next to LXC booting the same root filesystem (its own btrfs snapshot of it)."""

from __future__ import annotations

import contextlib
import os
import statistics
import time

from common import container_shape, mem_sample, memcg, pidns_members, ratio, read_text, rss_pss, summary
from ctd_side import CtdDaemon
from peers import LxcSystem

TEMPLATE = "debian-12"
MEMORY_BOOT_TIMEOUT = 30.0
IS_RUNNING = ["systemctl", "is-system-running", "--wait"]
NOT_YET = {"", "offline", "initializing", "starting", "unknown"}  # no answer yet, or still booting
BOOT_TIMEOUT = 120.0


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


class BootFailed(Exception):
    pass


def wait_booted(run, timeout: float = BOOT_TIMEOUT) -> str:  # type: ignore[no-untyped-def]
    """Ask `systemctl is-system-running --wait` until it answers with a final state (right after
    the start systemd may not listen yet: then ask again). run(argv) -> (exit code, stdout)."""
    deadline = time.monotonic() + timeout
    while True:
        # --wait blocks while systemd is starting; a boot that hangs (a job waiting for ever)
        # must not hang us: coreutils' timeout inside bounds each question.
        left = max(1, min(10, int(deadline - time.monotonic()) + 1))
        code, out = run(["timeout", str(left)] + IS_RUNNING)
        lines = out.strip().splitlines()
        state = lines[-1].strip() if lines else ""
        if code == 0 and state == "running":
            return state
        if state not in NOT_YET:
            return state
        if time.monotonic() > deadline:
            raise BootFailed(f"no final state within {timeout:.0f} s (last answer {state!r}, exit {code})")
        time.sleep(0.05)


class Runtimes:
    """ctd and LXC behind one face: create (untimed), start + wait until booted (timed), stop."""

    def __init__(self, ctd: CtdDaemon, lxc: LxcSystem) -> None:
        self.ctd, self.lxc = ctd, lxc
        self.src = lxc.make_source(TEMPLATE, ctd.state_dir / "storage" / "templates" / TEMPLATE / "rootfs")

    def name(self, tool: str, base: str) -> str:
        return f"bench-{base}" if tool == "ctd" else base

    def create(self, tool: str, name: str) -> None:
        if tool == "ctd":
            self.ctd.create(name, template=TEMPLATE)
        else:
            self.lxc.copy(self.src, name)
            self.lxc.make_bootable(name)

    def boot(self, tool: str, name: str, timeout: float = BOOT_TIMEOUT) -> tuple[float, str]:
        """(ms from the start request until a final state, that state)."""
        t0 = time.perf_counter()
        if tool == "ctd":
            self.ctd.start_ct(name)
            state = wait_booted(lambda argv: self.ctd.exec_output(name, argv), timeout)
        else:
            self.lxc.start(name)
            state = wait_booted(lambda argv: self.lxc.attach(name, argv), timeout)
        return _ms(t0), state

    def failed_units(self, tool: str, name: str) -> str:
        argv = ["systemctl", "--failed", "--no-legend", "--plain"]
        out = self.ctd.exec_output(name, argv)[1] if tool == "ctd" else self.lxc.attach(name, argv)[1]
        return " ".join(line.split()[0] for line in out.splitlines() if line.strip())

    def stop(self, tool: str, name: str) -> None:
        if tool == "ctd":
            self.ctd.stop_ct(name)
        else:
            self.lxc.stop(name)

    def destroy(self, tool: str, name: str) -> None:
        if tool == "ctd":
            self.ctd.destroy(name)
        else:
            self.lxc.destroy(name)

    def init_pid(self, tool: str, name: str) -> int | None:
        return self.ctd.init_pid(name) if tool == "ctd" else self.lxc.init_pid(name)

    def cgroup_dir(self, tool: str) -> str:
        return self.ctd.cgroup_name if tool == "ctd" else self.lxc.cgroup_dir


def bench_boot(rt: Runtimes, boots: int, log) -> dict:  # type: ignore[no-untyped-def]
    """One container per tool: its first boot (ssh host keys made then), then `boots` more, the
    tools interleaved; each stopped (killed) after booting, untimed."""
    out: dict = {}
    names = {t: rt.name(t, "deb-boot") for t in ("ctd", "lxc")}
    alive = []
    for tool in ("ctd", "lxc"):
        try:
            rt.create(tool, names[tool])
            ms, state = rt.boot(tool, names[tool])
            out[tool] = {"first_boot_ms": ms, "state": state, "boots_ms": [], "states": []}
            if state != "running":
                out[tool]["failed_units"] = rt.failed_units(tool, names[tool])
            rt.stop(tool, names[tool])
            alive.append(tool)
            log(f"  {tool}: first boot {ms:.0f} ms -> {state}")
        except Exception as exc:  # noqa: BLE001
            if tool == "ctd":
                raise
            out[tool] = {"error": str(exc).strip().splitlines()[0][:300]}
            log(f"  lxc could not boot {TEMPLATE}: {out[tool]['error']}")
            try:
                rt.stop(tool, names[tool])
            except Exception:  # noqa: BLE001
                pass
    for i in range(boots):
        order = alive if i % 2 == 0 else alive[::-1]
        for tool in order:
            ms, state = rt.boot(tool, names[tool])
            out[tool]["boots_ms"].append(ms)
            out[tool]["states"].append(state)
            rt.stop(tool, names[tool])
        log(f"  boot {i + 1}/{boots}: " + ", ".join(f"{t} {out[t]['boots_ms'][-1]:.0f} ms" for t in alive))
    for tool in ("ctd", "lxc"):
        if "boots_ms" in out.get(tool, {}):
            out[tool]["boot"] = summary(out[tool]["boots_ms"])
        try:
            rt.destroy(tool, names[tool])
        except Exception:  # noqa: BLE001
            if tool == "ctd":
                raise
    return out


def inotify_instances() -> int:
    """inotify instances open on the whole host (every container's systemd holds several; the
    kernel's fs.inotify.max_user_instances counts them per user, and the containers' user
    namespaces were all made by host root, so they count against root's)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                        n += 1
    return n


def bench_memory(rt: Runtimes, tool: str, count: int, settle: float, hier, log) -> dict:  # type: ignore[no-untyped-def]
    """count containers of one tool: create all, read, boot all one after another (each until
    booted), idle `settle` s, read; per container = difference / the number booted. A container
    that does not boot to "running" (the host's inotify limit, typically) ends the boots: it is
    stopped again and the figures are for those before it."""
    names = [rt.name(tool, f"deb-mem-{i:02d}") for i in range(count)]
    made: list[str] = []
    started: list[str] = []
    out: dict = {"count": count}
    try:
        for n in names:
            rt.create(tool, n)
            made.append(n)
        time.sleep(settle)
        host0, cg0, tool0 = mem_sample(), memcg(hier), memcg(hier, rt.cgroup_dir(tool))
        rss0 = rt.ctd.rss() if tool == "ctd" else None
        inotify0 = inotify_instances()
        boots, states = [], []
        t0 = time.perf_counter()
        for n in names:
            started.append(n)
            try:
                ms, state = rt.boot(tool, n, timeout=MEMORY_BOOT_TIMEOUT)
            except BootFailed as exc:
                ms, state = None, f"stuck: {exc}"
            if state != "running":
                out["boot_stopped"] = {"container": len(boots) + 1, "state": state,
                                       "failed_units": rt.failed_units(tool, n) if ms is not None else "",
                                       "inotify_instances": inotify_instances(),
                                       "max_user_instances": int(read_text("/proc/sys/fs/inotify/max_user_instances") or 0)}
                log(f"  {tool}: container {len(boots) + 1} did not boot to running ({state}); "
                    f"inotify instances on the host {out['boot_stopped']['inotify_instances']}, "
                    f"fs.inotify.max_user_instances {out['boot_stopped']['max_user_instances']}: "
                    f"measuring the {len(boots)} before it")
                rt.stop(tool, n)
                started.remove(n)
                break
            boots.append(ms)
            states.append(state)
        out["boot_all_s"] = _ms(t0) / 1000
        count = len(boots)
        out["booted"] = count
        if count == 0:
            raise BootFailed(f"{tool}: not one Debian container booted to running")
        out["inotify_per_container"] = (inotify_instances() - inotify0) / count
        log(f"  {tool}: {count} booted in {out['boot_all_s']:.1f} s; idling {settle:g} s")
        time.sleep(settle)
        host1, cg1, tool1 = mem_sample(), memcg(hier), memcg(hier, rt.cgroup_dir(tool))
        rss1 = rt.ctd.rss() if tool == "ctd" else None
        sums = [rss_pss(pidns_members(rt.init_pid(tool, n) or 0)) for n in started]
        shape = container_shape(rt.init_pid(tool, names[0]))
    finally:
        for n in started:
            rt.stop(tool, n)
        for n in made:
            rt.destroy(tool, n)

    def per(a: dict, b: dict, key: str) -> float:
        return (b[key] - a[key]) / 1024 / count

    out.update({
        "boot_ms": summary(boots), "states": {s: states.count(s) for s in set(states)},
        "host_MemAvailable_kb": (host0["MemAvailable"] - host1["MemAvailable"]) / count,
        "host_noise_kb": max(host0["spread_kb"], host1["spread_kb"]),
        "memcg_usage_kb": per(cg0, cg1, "usage"),
        "memcg_nocache_kb": ((cg1["usage"] - cg1["total_cache"]) - (cg0["usage"] - cg0["total_cache"])) / 1024 / count,
        "memcg_shmem_kb": per(cg0, cg1, "total_shmem"),
        "memcg_cache_kb": per(cg0, cg1, "total_cache"),
        "memcg_kmem_kb": per(cg0, cg1, "kmem"),
        "memcg_anon_kb": per(cg0, cg1, "total_rss"),
        "tool_nocache_kb": ((tool1["usage"] - tool1["total_cache"]) - (tool0["usage"] - tool0["total_cache"]))
        / 1024 / count,
        "rss_kb": statistics.mean(s["rss"] for s in sums),
        "pss_kb": statistics.mean(s["pss"] for s in sums),
    })
    if rss0 and rss1:
        out["daemon_kb"] = (rss1["daemon_VmRSS"] + rss1["spawner_VmRSS"] - rss0["daemon_VmRSS"]
                            - rss0["spawner_VmRSS"]) / count
    elif tool == "lxc":
        out["daemon_kb"] = None  # the monitors are in LXC's cgroup directory: part of tool/memcg
    if shape:
        out["mounts_per_container"] = shape["mounts"]
        out["processes_per_container"] = shape["processes"]
    return out


def report(d: dict, verdicts: list[str]) -> list[str]:
    def f(v: float | None, digits: int = 0) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = []
    b = d.get("boot")
    if b:
        n = b["ctd"]["boot"]["n"]
        lines += ["", f"(debian) {TEMPLATE} (systemd): start request -> `systemctl is-system-running --wait` "
                      f"answers, ms (first boot, then median of {n})"]
        lines.append(f"  {'':6} {'first':>7} {'median':>7} {'min':>7} {'max':>7}  {'state':10} {'ctd/this':>8}")
        for tool in ("ctd", "lxc"):
            v = b.get(tool, {})
            if "error" in v:
                lines.append(f"  {tool:6} LXC could not boot it here: {v['error']}")
                continue
            s = v["boot"]
            states = sorted(set([v["state"]] + v["states"]))
            r = "" if tool == "ctd" else f"{ratio(b['ctd']['boot']['median'], s['median']):.2f}x"
            lines.append(f"  {tool:6} {f(v['first_boot_ms']):>7} {f(s['median']):>7} {f(s['min']):>7} {f(s['max']):>7}"
                         f"  {','.join(states):10} {r:>8}")
            if v.get("failed_units"):
                lines.append(f"         failed units: {v['failed_units']}")
    m = d.get("memory")
    if m:
        first = next(iter(m.values()))
        lines += ["", f"(debian) memory per idle {TEMPLATE} container, kB ({first.get('booted', '?')} running per tool, "
                      "one tool at a time, booted and idle)"]
        cols = [("host", "host_MemAvailable_kb"), ("memcg", "memcg_usage_kb"), ("-cache", "memcg_nocache_kb"),
                ("shmem", "memcg_shmem_kb"), ("kmem", "memcg_kmem_kb"), ("anon", "memcg_anon_kb"),
                ("tool-cg", "tool_nocache_kb"), ("pss", "pss_kb"), ("rss", "rss_kb"), ("daemon", "daemon_kb")]
        lines.append(f"  {'':6}" + "".join(f"{c:>8}" for c, _ in cols) + f"{'boot N':>9}{'procs':>6}{'mounts':>7}")
        for tool in ("ctd", "lxc"):
            v = m.get(tool)
            if v is None:
                continue
            if "error" in v:
                lines.append(f"  {tool:6} not measured: {v['error']}")
                continue
            lines.append(f"  {tool:6}" + "".join(f"{f(v.get(k)):>8}" for _, k in cols)
                         + f"{v['boot_all_s']:>8.1f}s{v.get('processes_per_container', '?'):>6}"
                         f"{v.get('mounts_per_container', '?'):>7}")
            stop = v.get("boot_stopped")
            if stop:
                lines.append(f"         only {v['booted']} of {v['count']} measured: container {stop['container']} did "
                             f"not boot ({stop['state'][:60]}); the host had {stop['inotify_instances']} inotify "
                             f"instances open, fs.inotify.max_user_instances = {stop['max_user_instances']}")
        if "error" not in m.get("lxc", {"error": 1}):
            lines.append("  ctd/lxc" + "".join(f"{f(ratio(m['ctd'][k], m['lxc'][k]), 2) + 'x' if m['lxc'].get(k) else '':>8}"
                                                for _, k in cols)[1:])
            c, x = m["ctd"]["memcg_nocache_kb"], m["lxc"]["memcg_nocache_kb"]
            verdicts.append(f"debian memory (our memcg without page cache): ctd {c:.0f} kB vs lxc {x:.0f} kB per "
                            f"container ({ratio(c, x):.2f}x)")
        lines += [
            "  host: MemAvailable drop / N (noisy); memcg: growth of this run's memory cgroup / N (containers, ctd",
            "  and spawner, LXC monitors); -cache: without page cache (anon + charged kernel memory), as in (c);",
            "  shmem: tmpfs (journald's /run/log, part of cache, not reclaimable without swap); tool-cg: -cache",
            "  of the tool's own cgroup directory only; pss/rss: summed over the container's processes;",
            "  daemon: ctd + spawner VmRSS growth / N; inotify instances per container: "
            + ", ".join(f"{t} {m[t]['inotify_per_container']:.1f}" for t in ("ctd", "lxc")
                        if "inotify_per_container" in m.get(t, {})),
        ]
    if b and "boot" in b.get("ctd", {}):
        med = b["ctd"]["boot"]["median"]
        verdicts.append(f"debian boot to running: ctd median {med:.0f} ms"
                        + (f" vs lxc {b['lxc']['boot']['median']:.0f} ms" if "boot" in b.get("lxc", {}) else
                           " (lxc: could not boot it)"))
    return lines
