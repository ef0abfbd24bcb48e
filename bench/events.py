"""GET /1.0/events: how long an event takes from a change to K connected clients, and what the
limit watcher (1 s polls of every running instance's counters while anyone listens) costs ctd in
CPU. Usage (root, from the repo): python bench/events.py [RUNNING] [CLIENTS]"""
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import _start_daemon, _teardown
from tests.helpers.events import EventStream


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_over(pid, seconds):
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


tmp = Path(tempfile.mkdtemp(prefix="ctd-events-bench-"))
d = _start_daemon(tmp, "bench")
try:
    running = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    for i in range(running):
        d.ok("create", f"e{i}", "--template", "busybox", "--ram", "64M")
        d.ok("start", f"e{i}")
    pid = d.proc.pid
    idle = cpu_over(pid, 10)
    with EventStream(socket=str(d.socket), query={"type": "limit"}):
        time.sleep(1)
        watched = cpu_over(pid, 10)
    print(f"ctd CPU with {running} running containers: {idle * 100:.2f}% with no event client, "
          f"{watched * 100:.2f}% with one (the limit watcher polling)")
    streams = [EventStream(socket=str(d.socket), query={"instance": "e0", "type": "lifecycle"})
               for _ in range(clients)]
    for s in streams:
        s.__enter__()
    lat = []
    for n in range(1, 101):
        t0 = time.perf_counter()
        d.client.request("PATCH", "/1.0/instances/e0", {"description": f"d{n}"})
        answered = time.perf_counter() - t0
        for s in streams:
            s.wait(lambda ev, n=n: len(ev) >= n, timeout=10)
        lat.append((answered, max(s.arrived[n - 1] for s in streams) - t0))
    for s in streams:
        s.close()
    lat.sort(key=lambda x: x[1])
    print(f"PATCH sent -> event at all {clients} clients: median {lat[50][1] * 1000:.1f} ms "
          f"(the PATCH itself {sorted(a for a, _ in lat)[50] * 1000:.1f} ms), p95 {lat[95][1] * 1000:.1f} ms")
finally:
    _teardown(d)
