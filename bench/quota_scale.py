"""Create with --diskspace as containers pile up: the time of each create through the API.

    sudo /work/main/.venv/bin/python bench/quota_scale.py --count 1000      # ~5-10 minutes

A scratch ctd (own state directory, pool image, socket, id area) builds the busybox template and
creates COUNT stopped containers, each with `limits: {diskspace: 1G}` (what `ctctl create NAME
busybox --diskspace 1G` sends); every create is timed on the client, and each new container
writes nothing. It prints the median of the creates around the 1st, 100th, 500th and 1000th
(a window of 5 on each side), the pool's quota mode (`GET /1.0/storage`: quota_mode), and the
load average; then destroys everything and releases the pool.

The daemon runs the code of the checkout this file is in, or of --code DIR (e.g. an older
checkout, to measure before/after on one machine in one sitting). --quota-mode simple puts
`quota_mode = "simple"` in its ctd.toml (the opt-in; without it the pool gets ctd's default,
full qgroups; a checkout older than the setting refuses it).

    sudo /work/main/.venv/bin/python bench/quota_scale.py --driver full --count 1000     # ~2-6 min

--driver simple|full measures the storage driver alone (no daemon): a fresh 8 GiB loop btrfs,
quota in that mode, a template of 300 small files, then create_instance + set_quota (1G) per
instance, each timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from ctd_side import scratch_daemon  # noqa: E402


def window(samples: list[float], index: int, half: int = 5) -> float:
    """Median of the samples around index (0-based), clipped to the list."""
    lo, hi = max(0, index - half), min(len(samples), index + half + 1)
    return statistics.median(samples[lo:hi])


def driver_level(mode: str, count: int, work: Path) -> dict:
    """create_instance and set_quota timed on a throwaway btrfs with quota in mode."""
    import subprocess

    from ctd.storage.btrfs import BtrfsStorage
    from ctd.storage.btrfs.quota import QuotaMode
    from tests.helpers.btrfs import loop_btrfs
    create, quota = [], []
    with loop_btrfs(work, size=8 << 30) as mnt:
        if mode == "full":  # on before ctd sees the pool: an older ctd's pool
            subprocess.run(["btrfs", "quota", "enable", str(mnt)], check=True)
        bt = BtrfsStorage(mnt / "storage", enable_quota=True, quota_mode=QuotaMode(mode))
        bt.prepare()
        got = bt.quota_mode()
        staging = bt.new_template_dir("base")
        for i in range(300):
            (staging / "rootfs" / f"f{i}").write_bytes(os.urandom(4096))
        bt.commit_template("base", staging)
        for i in range(count):
            t0 = time.perf_counter()
            bt.create_instance(f"i{i}", "base")
            t1 = time.perf_counter()
            bt.set_quota(f"i{i}", 1 << 30)
            create.append((t1 - t0) * 1000)
            quota.append((time.perf_counter() - t1) * 1000)
    points = [p for p in (1, 100, 500, 1000) if p <= count]
    return {"mode": got.value if got else None, "load": os.getloadavg(),
            "create_ms": {str(p): round(window(create, p - 1), 1) for p in points},
            "set_quota_ms": {str(p): round(window(quota, p - 1), 1) for p in points}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--code", type=Path, default=HERE.parent, help="checkout whose ctd runs")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--output", type=Path)
    ap.add_argument("--no-diskspace", action="store_true",
                    help="create without a limit (what the rest of a create costs at that count)")
    ap.add_argument("--driver", choices=("simple", "full"), help="the storage driver alone, in this quota mode")
    ap.add_argument("--quota-mode", choices=("simple", "full"), help="ctd.toml quota_mode of the scratch ctd")
    args = ap.parse_args()
    if args.driver:
        scratch = Path(tempfile.mkdtemp(prefix="ctd-quota-", dir=args.workdir))
        try:
            print(json.dumps(driver_level(args.driver, args.count, scratch), indent=1))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    os.environ["PYTHONPATH"] = str(args.code.resolve())  # the daemon's code
    work = Path(tempfile.mkdtemp(prefix="ctd-quota-", dir=args.workdir))
    daemon = scratch_daemon(work, "q", f'quota_mode = "{args.quota_mode}"\n' if args.quota_mode else "")
    samples: list[float] = []
    out: dict = {"code": str(args.code), "count": args.count, "diskspace": not args.no_diskspace,
                 "quota_mode_setting": args.quota_mode}
    try:
        daemon.build_template("busybox")
        storage = daemon.storage_info()
        out["pool"] = {k: storage.get(k) for k in ("driver", "quota", "quota_mode", "quota_mode_reason")}
        for i in range(args.count):
            name = f"bench-q{i}"
            daemon.created.add(name)
            t0 = time.perf_counter()
            body: dict = {"name": name, "template": "busybox"}
            if not args.no_diskspace:
                body["limits"] = {"diskspace": "1G"}
            daemon.client.run("POST", "/1.0/instances", body)
            samples.append((time.perf_counter() - t0) * 1000)
            if (i + 1) % 100 == 0:
                print(f"{i + 1} created, last {samples[-1]:.0f} ms", file=sys.stderr, flush=True)
        shown = daemon.instance(f"bench-q{args.count - 1}")
        out["last_disk"] = shown.get("disk")
        out["load"] = os.getloadavg()
        points = [p for p in (1, 100, 500, 1000) if p <= args.count]
        out["create_ms"] = {str(p): round(window(samples, p - 1), 1) for p in points}
        out["samples_ms"] = [round(s, 1) for s in samples]
    finally:
        errors = daemon.cleanup()
        daemon.stop()
        errors += daemon.release_storage()
        for e in errors:
            print("cleanup:", e, file=sys.stderr)
        if not errors:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if k != "samples_ms"}, indent=1))
    if args.output:
        args.output.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
