"""(pool direct I/O, issue #22) What direct I/O on the default pool's loop device saves and costs.

Makes a throwaway pool the way ctd does (ctd.storage.pool.choose_storage on a scratch state
directory, on the disk that holds --workdir), writes one file of --size MiB into it, and with
the loop's direct I/O on and then off measures:
- page cache a cold read of the file adds: the file's own pages (btrfs) plus what the backing
  pool.img gained (fincore), and /proc/meminfo Cached (noisy on a shared machine);
- sequential read throughput (dd bs=1M, --runs runs, median) with the file's and pool.img's
  cached pages dropped before each run (cold), and, without direct I/O, with only the file's
  dropped (the second copy in pool.img serving it: what the double caching buys).
Only this scratch pool's files are dropped from the cache; the pool is released at the end.

  sudo .venv/bin/python bench/pool_dio.py [--size 200] [--runs 3] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctd.storage.loopdio import set_direct_io  # noqa: E402
from ctd.storage.pool import choose_storage, release_pool  # noqa: E402

MiB = 1 << 20


def cached(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def meminfo_cached() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    return 0


def drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def dd_mb_s(path: Path) -> float:
    r = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", r.stderr)
    assert m, r.stderr
    return int(m.group(1)) / float(m.group(2)) / MiB


def cache_per_read(image: Path, f: Path, label: str) -> None:
    drop(f)
    drop(image)
    img0, mem0 = cached(image), meminfo_cached()
    with f.open("rb", buffering=0) as fh:
        while fh.read(4 * MiB):
            pass
    own, img, mem = cached(f), cached(image) - img0, meminfo_cached() - mem0
    print(f"{label}: one read adds {own / MiB:.0f} MiB (file) + {img / MiB:.0f} MiB (pool.img) "
          f"= {(own + img) / MiB:.0f} MiB; /proc/meminfo Cached +{mem / MiB:.0f} MiB")


def throughput(device: str, image: Path, f: Path, runs: int) -> None:
    """dd runs taking turns (on, off, off with pool.img cached), so drift in the machine's load
    hits each way alike."""
    got: dict[str, list[float]] = {"dio on, cold": [], "dio off, cold": [], "dio off, pool.img cached": []}
    for _ in range(runs):
        for label in got:
            set_direct_io(device, label.startswith("dio on"))
            drop(f)
            if "cached" in label:
                read_all(f)  # fills pool.img's cache (no direct I/O), then only the file is dropped
                drop(f)
            else:
                drop(image)
            got[label].append(dd_mb_s(f))
    for label, xs in got.items():
        print(f"{label}: {statistics.median(xs):.0f} MB/s median of {runs} ({', '.join(f'{x:.0f}' for x in xs)})")


def read_all(path: Path) -> None:
    with path.open("rb", buffering=0) as fh:
        while fh.read(4 * MiB):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=200, help="MiB in the file (default 200)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="ctd-bench-dio-", dir=args.workdir)) / "state"
    try:
        d = choose_storage(state, pool_size=max(1024, 3 * args.size) * MiB)
        if d.device is None or d.image is None:
            raise SystemExit(f"no loop pool here: {d.reason}")
        d.prepare()
        f = d.root / "big"
        with f.open("wb") as fh:
            for _ in range(args.size):
                fh.write(os.urandom(MiB))
        print(f"pool {d.image} on {d.device}; file {args.size} MiB; kernel {os.uname().release}")
        print(f"dio on at start: {d.direct_io} {d.direct_io_reason}")
        cache_per_read(d.image, f, "dio on")
        set_direct_io(d.device, False)
        cache_per_read(d.image, f, "dio off")
        throughput(d.device, d.image, f, args.runs)
    finally:
        release_pool(state)
        for p in (state / "pool.img", state / "storage"):
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)
        state.rmdir()
        state.parent.rmdir()


if __name__ == "__main__":
    main()
