"""Container migration downtime (docs/performance.md, "Migration"): two ctd nodes and one etcd
member on this host, busybox containers migrated while they run, idle and with 50 MB written
during the copy, three runs each. Run as root:

    PYTHONPATH=. .venv/bin/pytest -q -s bench/migrate_downtime.py --basetemp /tmp/bt-migbench
"""

from __future__ import annotations

import json
from typing import Any

from tests.host.test_cluster_migrate import Pair, pair  # noqa: F401 — the fixture

RUNS = 3


def test_migration_downtime(pair: Pair) -> None:  # noqa: F811
    a, b = pair.a, pair.b
    results: dict[str, list[dict[str, Any]]] = {}
    for case in ("idle", "50MB"):
        for i in range(RUNS):
            name = f"bm-{case.lower()}-{i}"
            a.ok("create", name, "--template", "busybox")
            a.ok("start", name)
            if case == "50MB":   # written while the copy runs
                r = a.sh(name, "(dd if=/dev/urandom of=/chg bs=1M count=50 2>/dev/null) </dev/null >/dev/null 2>&1 &")
                assert r.code == 0, r.err
            res = a.client.run("POST", f"/1.0/instances/{name}/migrate", {"to": "node-b"})
            if case == "50MB":   # what of it was written before the stop (all of it, unless the copy was faster)
                res["written"] = int(b.sh(name, "wc -c < /chg").out.strip() or 0)
            results.setdefault(case, []).append(res)
            b.ok("destroy", name, "--force")
    for case, runs in results.items():
        for res in runs:
            shown = {k: res.get(k) for k in ("rounds", "downtime", "downtime_parts", "written")}
            print("migrate", case, json.dumps(shown))
