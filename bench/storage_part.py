"""(storage) Create-from-template on btrfs: ctd's create next to LXC's `lxc-copy -s` (a btrfs snapshot
clone) and a `cp -a` of the same root, per template; then how much the pool grows per container
for many containers made from one template."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from common import BenchError, ratio, run_quiet, summary
from ctd_side import CtdDaemon
from peers import LxcSystem

METHODS = ("ctd", "lxc-copy -s", "cp -a", "cp -a --reflink=never")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def du_bytes(path: Path) -> int:
    r = run_quiet(["du", "-sb", "--", str(path)])
    return int(r.stdout.split()[0]) if r.returncode == 0 and r.stdout else 0


def pool_used(ctd: CtdDaemon) -> int:
    """ctd's pool use as GET /1.0/storage reports it, after `btrfs filesystem sync`."""
    run_quiet(["btrfs", "filesystem", "sync", str(ctd.state_dir / "storage")])
    return ctd.storage_info()["used"]


def fs_sync(*paths: Path) -> None:
    for p in paths:
        run_quiet(["btrfs", "filesystem", "sync", str(p)])


def qgroups(pool: Path) -> dict[int, tuple[int, int]]:
    """subvolume id -> (referenced, exclusive) bytes, from `btrfs qgroup show` (read only)."""
    fs_sync(pool)
    out = {}
    for line in run_quiet(["btrfs", "qgroup", "show", "--raw", str(pool)]).stdout.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0].startswith("0/") and f[1].isdigit() and f[2].isdigit():
            out[int(f[0][2:])] = (int(f[1]), int(f[2]))
    return out


def subvolume_id(path: Path) -> int | None:
    r = run_quiet(["btrfs", "inspect-internal", "rootid", str(path)])
    return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else None


def bench_create(ctd: CtdDaemon, lxc: LxcSystem, template: str, count: int, log) -> dict:  # type: ignore[no-untyped-def]
    """count creates per method, interleaved (order rotated every round); each copy removed again
    (untimed, but its time kept) before the next round."""
    rootfs = ctd.state_dir / "storage" / "templates" / template / "rootfs"
    src = lxc.make_source(template, rootfs)
    src_root = lxc.rootfs_of(src)  # on our loop btrfs: cp -a copies from it to the same filesystem
    copies = lxc.fs.root / "cp"
    copies.mkdir(exist_ok=True)
    size = du_bytes(rootfs)
    files = int(run_quiet(["sh", "-c", f"find '{rootfs}' -xdev | wc -l"]).stdout.strip() or 0)
    created: dict[str, list[float]] = {m: [] for m in METHODS}
    removed: dict[str, list[float]] = {m: [] for m in METHODS}

    def cp(flags: list[str], i: int | str) -> tuple[float, float]:
        dst = copies / f"{template}-{'n' if flags else 'r'}{i}"
        t0 = time.perf_counter()
        r = run_quiet(["cp", "-a", *flags, "--", str(src_root), str(dst)])
        ms = _ms(t0)
        if r.returncode != 0:
            raise BenchError(f"cp -a {src_root}: {r.stderr.strip()}")
        t0 = time.perf_counter()
        shutil.rmtree(dst)
        return ms, _ms(t0)

    def ctd_once(i: int | str) -> tuple[float, float]:
        name = f"bench-st-{template}-{i}"
        t0 = time.perf_counter()
        ctd.create(name, template=template)
        ms = _ms(t0)
        t0 = time.perf_counter()
        ctd.destroy(name)
        return ms, _ms(t0)

    def lxc_once(i: int | str) -> tuple[float, float]:
        name = f"st-{template}-{i}"
        ms = lxc.copy(src, name)
        return ms, lxc.destroy_timed(name)

    runners = {"ctd": ctd_once, "lxc-copy -s": lxc_once, "cp -a": lambda i: cp([], i),
               "cp -a --reflink=never": lambda i: cp(["--reflink=never"], i)}
    pool = ctd.state_dir / "storage"
    for m in METHODS:  # one untimed round: first-use costs out
        runners[m]("w")
        fs_sync(pool, lxc.fs.root)
    for i in range(count):
        order = list(METHODS[i % len(METHODS):] + METHODS[:i % len(METHODS)])
        for m in order:
            c, d = runners[m](i)
            created[m].append(c)
            removed[m].append(d)
            # untimed: write out what this step left dirty, so a snapshot (which commits the
            # transaction) never pays for the copy made just before it
            fs_sync(pool, lxc.fs.root)
        if i % 5 == 0:
            log(f"  {template}: round {i + 1}/{count}: " + ", ".join(f"{m} {created[m][-1]:.0f}" for m in METHODS)
                + " ms")
    return {"template": template, "rootfs_bytes": size, "rootfs_files": files,
            "create": {m: summary(v) for m, v in created.items()},
            "remove": {m: summary(v) for m, v in removed.items()},
            "samples_ms": {m: [round(x, 2) for x in v] for m, v in created.items()}}


def bench_density(ctd: CtdDaemon, lxc: LxcSystem, template: str, count: int, log) -> dict:  # type: ignore[no-untyped-def]
    """count ctd containers from one template: pool use growth per container (statvfs as ctd's
    GET /1.0/storage shows it, and the containers' own qgroups); lxc-copy -s clones likewise on
    our btrfs; everything destroyed again."""
    out: dict = {"template": template, "count": count}
    names = [f"bench-den-{i:03d}" for i in range(count)]
    made: list[str] = []
    info = ctd.storage_info()
    out["pool"] = {k: info.get(k) for k in ("driver", "size", "quota")}
    used0 = pool_used(ctd)
    try:
        each = []
        t0 = time.perf_counter()
        for i, n in enumerate(names):
            t1 = time.perf_counter()
            ctd.create(n, template=template)
            each.append(_ms(t1))
            made.append(n)
            if (i + 1) % 50 == 0:
                log(f"  ctd: {i + 1}/{count} created (last one {each[-1]:.0f} ms)")
        out["ctd_create_all_s"] = _ms(t0) / 1000
        out["ctd_create_ms"] = summary(each)
        tenth = max(1, count // 10)
        out["ctd_create_first_tenth_median_ms"] = statistics.median(each[:tenth])
        out["ctd_create_last_tenth_median_ms"] = statistics.median(each[-tenth:])
        used1 = pool_used(ctd)
        out["ctd_pool_growth_per_ct"] = (used1 - used0) / count
        # what ctd shows as an instance's disk use, and the qgroup's exclusive bytes (its own data)
        sample = names[::tenth]
        shown = [d["used"] for d in (ctd.instance(n)["disk"] for n in sample) if d and d.get("used") is not None]
        q = qgroups(ctd.state_dir / "storage")
        ids = [subvolume_id(ctd.state_dir / "storage" / "instances" / n / "rootfs") for n in sample]
        excl = [q[i][1] for i in ids if i in q]
        out["ctd_disk_used_shown_median"] = statistics.median(shown) if shown else None
        out["ctd_qgroup_exclusive_median"] = statistics.median(excl) if excl else None
    finally:
        t0 = time.perf_counter()
        for n in made:
            ctd.destroy(n)
        out["ctd_destroy_all_s"] = _ms(t0) / 1000
    out["ctd_pool_left_after_destroy"] = pool_used(ctd) - used0

    src = lxc.make_source(template, ctd.state_dir / "storage" / "templates" / template / "rootfs")
    clones: list[str] = []
    used0 = lxc.fs.used()
    try:
        t0 = time.perf_counter()
        for i in range(count):
            n = f"den-{i:03d}"
            lxc.copy(src, n)
            clones.append(n)
        out["lxc_create_all_s"] = _ms(t0) / 1000
        out["lxc_fs_growth_per_ct"] = (lxc.fs.used() - used0) / count
    finally:
        t0 = time.perf_counter()
        for n in clones:
            lxc.destroy(n)
        out["lxc_destroy_all_s"] = _ms(t0) / 1000
    return out


def report(s: dict, verdicts: list[str]) -> list[str]:
    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    lines = []
    for c in s["create"]:
        n = c["create"]["ctd"]["n"]
        lines.append("")
        lines.append(f"(storage) create from template {c['template']} ({c['rootfs_bytes'] / 1e6:.0f} MB, "
                     f"{c['rootfs_files']} files) on btrfs, ms ({n} each, interleaved)")
        lines.append(f"  {'':26} {'mean':>8} {'median':>8} {'p90':>8} {'ctd/this':>9} {'remove med':>11}")
        labels = {"ctd": "ctd POST /1.0/instances", "lxc-copy -s": "lxc-copy -s (btrfs snapshot)",
                  "cp -a": "cp -a (coreutils: reflinks)", "cp -a --reflink=never": "cp -a --reflink=never"}
        for m in METHODS:
            v = c["create"][m]
            r = "" if m == "ctd" else f"{ratio(c['create']['ctd']['median'], v['median']):.2f}x"
            lines.append(f"  {labels[m]:26} {f(v['mean']):>8} {f(v['median']):>8} {f(v['p90']):>8} {r:>9} "
                         f"{f(c['remove'][m]['median']):>11}")
        cm, lm = c["create"]["ctd"]["median"], c["create"]["lxc-copy -s"]["median"]
        verdicts.append(f"storage create ({c['template']}): ctd median {cm:.1f} ms -> "
                        f"{'PASS' if cm <= 50 else 'FAIL'} (target <= 50 ms); vs lxc-copy -s {lm:.1f} ms -> "
                        f"{'PASS' if cm < lm else 'FAIL'} (target faster than LXC)")
    d = s.get("density")
    if d:
        lines.append("")
        lines.append(f"(storage) {d['count']} containers from {d['template']}: pool growth per container")
        lines.append(f"  ctd: pool used (GET /1.0/storage, after btrfs filesystem sync) +"
                     f"{d['ctd_pool_growth_per_ct'] / 1024:.0f} kB per container; qgroup exclusive "
                     f"{f((d['ctd_qgroup_exclusive_median'] or 0) / 1024, 0)} kB (median of a sample; the disk use "
                     f"ctd shows, referenced: {f((d['ctd_disk_used_shown_median'] or 0) / 1e6, 0)} MB)")
        lines.append(f"       create all {d['ctd_create_all_s']:.1f} s (median {d['ctd_create_ms']['median']:.0f} ms; "
                     f"first tenth {d['ctd_create_first_tenth_median_ms']:.0f} ms, last tenth "
                     f"{d['ctd_create_last_tenth_median_ms']:.0f} ms), destroy all {d['ctd_destroy_all_s']:.1f} s; "
                     f"left after destroying them: {d['ctd_pool_left_after_destroy'] / 1024:+.0f} kB")
        lines.append(f"  lxc-copy -s on our btrfs: +{d['lxc_fs_growth_per_ct'] / 1024:.0f} kB per container; "
                     f"create all {d['lxc_create_all_s']:.1f} s, destroy all {d['lxc_destroy_all_s']:.1f} s")
        lines.append(f"  ctd/lxc growth per container: {f(ratio(d['ctd_pool_growth_per_ct'], d['lxc_fs_growth_per_ct']), 2)}x")
    return lines
