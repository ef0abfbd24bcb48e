"""Boot storm: after a simulated host boot, how long until every onboot container runs.

    sudo /work/main/.venv/bin/python bench/boot_storm.py [--containers 200] [--concurrency 4 --concurrency 16]

A private ctd (bench/ctd_side.py) gets N busybox containers with --onboot yes, starts them,
then the host boot is simulated as the tests do it: ctd and every container init are SIGKILLed
by PID and a new boot id is written to the file `boot_id_file` points at. Timed: from the new
ctd's exec until its API answers, and until the boot sequence reports every container started
(GET /1.0 "boot"), for each boot_concurrency given. Prints one line per run and writes JSON to
bench/results/boot_storm.json. Not measured here: Debian containers and lxc-autostart next to
it (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import BenchError  # noqa: E402
from ctd_side import CtdDaemon  # noqa: E402


def kill_and_reboot(d: CtdDaemon, boot_id: Path) -> None:
    pids = [i["pid"] for i in d.client.get("/1.0/instances")["instances"] if i["pid"]]
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    break
            except OSError:
                break
            time.sleep(0.02)
    boot_id.write_text(f"{uuid.uuid4()}\n")


def one_storm(d: CtdDaemon, boot_id: Path, count: int, concurrency: int) -> dict:
    d.extra_settings = f'default_network = ""\nboot_id_file = "{boot_id}"\nboot_concurrency = {concurrency}\n'
    kill_and_reboot(d, boot_id)
    t0 = time.monotonic()
    d.start()
    t_api = time.monotonic() - t0
    while True:
        boot = d.client.get("/1.0")["boot"]
        if boot["state"] == "done":
            break
        if time.monotonic() - t0 > 600:
            raise BenchError(f"the boot sequence did not finish in 600 s: {boot.get('group')}")
        time.sleep(0.05)
    t_all = time.monotonic() - t0
    started = sum(1 for s in boot.get("steps", []) if s["outcome"] == "started")
    running = sum(1 for i in d.client.get("/1.0/instances")["instances"] if i["state"] == "running")
    return {"containers": count, "boot_concurrency": concurrency, "api_answers_s": round(t_api, 2),
            "all_running_s": round(t_all, 2), "started": started, "running": running,
            "per_container_ms": round((t_all - t_api) * 1000 / max(count, 1), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--containers", type=int, default=200)
    p.add_argument("--concurrency", type=int, action="append", help="boot_concurrency (repeatable; default 4)")
    p.add_argument("--workdir", default="/var/tmp")
    p.add_argument("--output", default=str(HERE / "results" / "boot_storm.json"))
    args = p.parse_args()
    if os.geteuid() != 0:
        print("boot_storm: needs root", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="ctd-bootstorm-", dir=args.workdir))
    boot_id = work / "boot_id"
    boot_id.write_text(f"{uuid.uuid4()}\n")
    d = CtdDaemon(work, f"boot{uuid.uuid4().hex[:4]}", idmap_base=3_000_000_000)
    # No NIC (no host bridge of the bench's): the storm times the starts themselves.
    d.extra_settings = f'default_network = ""\nboot_id_file = "{boot_id}"\n'
    results: list[dict] = []
    errors: list[str] = []
    try:
        d.start()
        d.build_template("busybox")
        for n in range(args.containers):
            name = f"bench-b{n}"
            d.created.add(name)
            d.client.run("POST", "/1.0/instances", {"name": name, "template": "busybox", "onboot": True})
            d.start_ct(name)
        for concurrency in args.concurrency or [4]:
            result = one_storm(d, boot_id, args.containers, concurrency)
            results.append(result)
            print(f"{result['containers']} busybox containers, boot_concurrency {concurrency}: API answers after "
                  f"{result['api_answers_s']} s, all {result['started']} started after {result['all_running_s']} s "
                  f"({result['per_container_ms']} ms each after the API)", flush=True)
    finally:
        errors += d.cleanup()
        d.stop()
        errors += d.network_leftovers() + d.release_storage()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"results": results, "errors": errors}, indent=2) + "\n")
    for error in errors:
        print(f"cleanup: {error}", file=sys.stderr)
    if not errors:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
