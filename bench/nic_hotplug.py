"""NICs of a running container: how long `nic add` (veth into its netns, host side, filters,
addresses inside, guest files, dnsmasq told) and `nic remove` take through the API, and how long
a network's dnsmasq needs from `network create` to answering. Usage (root, from the repo):
python bench/nic_hotplug.py [REPEAT]"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import _start_daemon, _teardown

repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 20
tmp = Path(tempfile.mkdtemp(prefix="ctd-nic-bench-"))
d = _start_daemon(tmp, "bench")
try:
    created = []
    for name in ("nbone", "nbtwo"):
        t0 = time.perf_counter()
        d.ok("network", "create", name)
        created.append((time.perf_counter() - t0) * 1e3)
    plain = []
    for name in ("nbthree", "nbfour"):
        t0 = time.perf_counter()
        d.ok("network", "create", name, "--no-dhcp")
        plain.append((time.perf_counter() - t0) * 1e3)
    d.ok("create", "nb", "--template", "busybox", "--net", "nbone")
    d.ok("start", "nb")
    add, remove = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        d.client.request("POST", "/1.0/instances/nb/nics", {"network": "nbtwo"})
        t1 = time.perf_counter()
        d.client.request("DELETE", "/1.0/instances/nb/nics/eth1")
        t2 = time.perf_counter()
        add.append((t1 - t0) * 1e3)
        remove.append((t2 - t1) * 1e3)
    print(f"ctctl network create: {statistics.median(created):.1f} ms with dnsmasq, "
          f"{statistics.median(plain):.1f} ms --no-dhcp (medians of 2, ctctl's own start included)")
    print(f"nic add (running container):  median {statistics.median(add):.1f} ms, "
          f"max {max(add):.1f} ms ({repeat} times)")
    print(f"nic remove:                   median {statistics.median(remove):.1f} ms, max {max(remove):.1f} ms")
    d.ok("destroy", "--force", "nb")
    for name in ("nbone", "nbtwo", "nbthree", "nbfour"):
        d.ok("network", "delete", name)
finally:
    _teardown(d)
