"""The API at scale (issue #22): GET /1.0/instances and status with many instances, one client
and 20 concurrent ones, and `ctctl list` as a whole process.

    sudo .venv/bin/python bench/api_scale.py --stopped 700 --running 300 [--clients 20] [--json out.json]

A private ctd (bench/ctd_side.py; no default network: a /24 holds 250 NICs) gets N busybox
containers, M of them running; then, measured from this process (threads speaking raw HTTP on
the socket; replies read whole, not parsed, so the client's JSON work does not count):
- list: the whole list, 1 client x 20 requests, then 20 clients x 10 requests each; the same
  with Accept-Encoding: gzip (the reply decompressed within the time); one page (?limit=50);
  the concurrent clients are processes (--threads: threads of this process, as before);
- status of random instances: 1 client x 100, then 20 clients x 25 each;
- `ctctl list` (the CLI process, a hyperfine-like loop of 20 runs) with --limit 20 and in full;
- the create and start rates, ctd's RSS.
Interrupted (Ctrl-C, SIGTERM) or failed: the teardown destroys everything (ctd_side.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from ctd_side import CtdDaemon, bench_daemon  # noqa: E402

from ctctl.client import unix_exchange  # noqa: E402

PREFIX = "bench-scale-"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(p / 100 * len(s)))], 2)


def shown(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "max_ms": round(max(ms), 2)}


GZIP = "gzip:"   # a target so marked is asked with Accept-Encoding: gzip (and its reply unpacked)


def get(sock: str, target: str) -> tuple[float, int]:
    """One request; (ms, bytes on the wire). A gzip reply is decompressed within the time: what a
    client pays to read it."""
    packed = target.startswith(GZIP)
    target = target.removeprefix(GZIP)
    t0 = time.perf_counter()
    reply = unix_exchange(sock, 60, "GET", target, None, {"Accept-Encoding": "gzip"} if packed else {})
    body = zlib.decompress(reply.body, wbits=31) if reply.body[:2] == b"\x1f\x8b" else reply.body
    took = (time.perf_counter() - t0) * 1000
    if reply.status != 200 or not body.startswith(b"{"):
        raise RuntimeError(f"GET {target}: HTTP {reply.status}: {reply.body[:200]!r}")
    return took, len(reply.body)


def _client(sock: str, targets: Callable[[], str], each: int, start: Any, out: Any) -> None:
    """One client process: `each` requests back to back, after every client is ready."""
    random.seed(os.getpid())   # forked: each its own random instances
    start.wait()
    times, size = [], 0
    for _ in range(each):
        took, size = get(sock, targets())
        times.append(took)
    out.put((times, size))


def hammer(sock: str, targets: Callable[[], str], clients: int, each: int,
           threads: bool = False) -> tuple[list[float], int]:
    """`clients` clients, each `each` requests back to back; all latencies (ms), last body size.
    The clients are processes (as real ones are: threads of one Python process would measure its
    own GIL, ~20 x a 1 MB read queued behind one another); threads=True: threads, as before
    2026-12-08."""
    if threads:
        return _threads(sock, targets, clients, each)
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(clients), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(sock, targets, each, start, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return [t for times, _ in got for t in times], got[-1][1]


def _threads(sock: str, targets: Callable[[], str], clients: int, each: int) -> tuple[list[float], int]:
    times: list[float] = []
    size = 0
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def one() -> None:
        nonlocal size
        start.wait()
        for _ in range(each):
            took, n = get(sock, targets())
            with lock:
                times.append(took)
                size = n
    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, size


def ctctl_runs(sock: str, args: list[str], runs: int = 20, cmd: list[str] | None = None) -> dict[str, float]:
    """The whole `ctctl` process, `runs` times after one warm-up (like hyperfine): wall time, and
    the CPU time the process used (less at the mercy of the other sessions on a shared host)."""
    env = {**os.environ, "CTD_SOCKET": sock, "PYTHONPATH": str(HERE.parent)}
    cmd = (cmd or [str(Path(sys.executable).parent / "ctctl")]) + args
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    ms, cpu = [], []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        ms.append((time.perf_counter() - t0) * 1000)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000)
    return {"runs": runs, "median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
            "p90_ms": pct(ms, 90), "cpu_median_ms": round(statistics.median(cpu), 1)}


def ctctl_part(sock: str) -> dict[str, object]:
    return {"python_c_pass": ctctl_runs(sock, ["-c", "pass"], cmd=[sys.executable]),
            "list": ctctl_runs(sock, ["list"]),
            "list_limit20": ctctl_runs(sock, ["list", "--limit", "20"])}


def make(d: CtdDaemon, names: list[str], workers: int, what: Callable[[str], None]) -> float:
    """`what` for every name on `workers` threads; per second."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(what, names))
    return round(len(names) / (time.monotonic() - t0), 1)


def cpu_ms(pid: int) -> float:
    """utime + stime of a process so far, ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def measure(d: CtdDaemon, names: list[str], clients: int, threads: bool = False) -> dict[str, object]:
    """Latencies, and ctd's CPU time per request under the 20 clients: what a request costs the
    daemon whatever else runs on the host (with N clients queued, a request waits ~N x that)."""
    sock = str(d.socket)
    out: dict[str, object] = {}

    def phase(label: str, targets: Callable[[], str], one_n: int, many_n: int, extra: dict[str, object]) -> None:
        one, size = hammer(sock, targets, 1, one_n)
        before = cpu_ms(d.pid)
        many, _ = hammer(sock, targets, clients, many_n, threads)
        per = (cpu_ms(d.pid) - before) / len(many)
        out[label] = {**extra, "bytes": size, "1_client": shown(one), f"{clients}_clients": shown(many),
                      "ctd_cpu_ms_per_request": round(per, 2)}

    for label, target in (("list_all", "/1.0/instances"), ("list_all_gzip", GZIP + "/1.0/instances"),
                          ("list_page50", "/1.0/instances?limit=50")):
        get(sock, target)   # the first answer builds the kept views
        phase(label, lambda t=target: t, 20, 10, {})   # type: ignore[misc]
    phase("status", lambda: f"/1.0/instances/{random.choice(names)}", 100, 25, {})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stopped", type=int, default=70)
    ap.add_argument("--running", type=int, default=30)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4, help="threads creating and starting containers")
    ap.add_argument("--threads", action="store_true", help="the concurrent clients are threads of this process "
                    "(the way before 2026-12-08), not processes")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--workdir", default="/var/tmp")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/api_scale.py: run as root: it starts containers", file=sys.stderr)
        return 1
    tag = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"ctd-bench-{tag}-", dir=a.workdir))
    os.chmod(work, 0o711)
    gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 30
    res: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "machine": f"{os.cpu_count()} cpus, {gib} GiB", "load_before": os.getloadavg()}
    total = a.stopped + a.running
    names = [f"{PREFIX}{i:04d}" for i in range(total)]
    try:
        with bench_daemon(work, tag, 'default_network = ""\n') as d:
            d.build_template("busybox")

            def log(key: str, value: object) -> None:   # each part as it is measured (an interrupt keeps them)
                res[key] = value
                print(f"{key}: {json.dumps(value)}", file=sys.stderr, flush=True)
            small = min(10, total)
            log("create_per_s_first10", make(d, names[:small], a.workers, d.create))
            log("ctctl_at_10", ctctl_part(str(d.socket)))
            log("create_per_s_rest", make(d, names[small:], a.workers, d.create) if total > small else None)
            log("start_per_s", make(d, names[:a.running], a.workers, d.start_ct))
            log("instances", {"total": total, "running": a.running})
            log("ctd_rss_kb", d.rss())
            log("api", measure(d, names, a.clients, a.threads))
            log("ctctl_at_all", ctctl_part(str(d.socket)))
            log("ctd_rss_kb_after", d.rss())
            log("load_after", os.getloadavg())
    except KeyboardInterrupt:
        print("interrupted: torn down", file=sys.stderr)
        return 130
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
