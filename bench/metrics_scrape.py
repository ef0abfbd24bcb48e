"""Cost of a Prometheus scrape (GET /1.0/metrics) next to GET /1.0/instances, and how much a
scrape delays other requests. Usage (root, from the repo): python bench/metrics_scrape.py [N]"""
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import _start_daemon, _teardown
from tests.security.test_remote_access import free_port


def unix_get(path, target):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path)); s.sendall(f"GET {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        return b"".join(iter(lambda: s.recv(65536), b""))

tmp = Path(tempfile.mkdtemp(prefix="ctd-metrics-bench-"))
d = _start_daemon(tmp, "bench", f'metrics_address = "127.0.0.1:{free_port()}"\n')
try:
    N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for i in range(N):
        name = f"b{i}"
        d.ok("create", name, "--template", "busybox", "--ram", "64M", "--numproc", "50")
        if i % 2 == 0:
            d.ok("start", name)
    for target in ("/1.0/metrics", "/1.0/instances"):
        unix_get(d.socket, target)
        t = []
        for _ in range(10):
            t0 = time.perf_counter(); body = unix_get(d.socket, target); t.append(time.perf_counter() - t0)
        t.sort()
        print(f"{target}: {N} instances ({N//2 + N%2} running): median {t[5]*1000:.1f} ms, max {t[-1]*1000:.1f} ms, {len(body)} bytes")
    stop = threading.Event()
    def scraper():
        while not stop.is_set():
            unix_get(d.socket, "/1.0/metrics")
    for quiet in (True, False):
        th = None
        if not quiet:
            th = threading.Thread(target=scraper); th.start()
        t = []
        for _ in range(40):
            t0 = time.perf_counter(); unix_get(d.socket, "/1.0"); t.append(time.perf_counter() - t0)
        stop.set()
        if th: th.join()
        t.sort()
        print(f"GET /1.0 {'alone' if quiet else 'during back-to-back scrapes'}: median {t[20]*1000:.1f} ms, p95 {t[38]*1000:.1f} ms")
finally:
    _teardown(d)
