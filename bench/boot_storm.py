"""Boot storm: after a simulated host boot, how long until every onboot container runs, next to
lxc-autostart on the same roots.

    sudo /work/main/.venv/bin/python bench/boot_storm.py [--containers 200] [--debian 20]
                                                         [--concurrency 4 --concurrency 16] [--no-lxc]

A private ctd (bench/ctd_side.py) gets N busybox containers and M Debian 12 containers (systemd;
the debian-12 template built with mmdebstrap through ctd's API, as the debian bench part does),
all --onboot yes, and starts them; then the host boot is simulated as the tests do it: ctd and
every container init are SIGKILLed by PID and a new boot id is written to the file
`boot_id_file` points at. Timed, for each boot_concurrency given: from the new ctd's exec until
its API answers, until the boot sequence reports every container started (GET /1.0 "boot"),
and until every Debian guest's systemd says it is up (`systemctl is-system-running --wait`).

Then the peer (bench/autostart_peer.py): ctd and the inits are killed once more, one privileged
LXC container per ctd container is pointed at that container's own root, and `lxc-autostart`
starts them all; timed the same way (until it returns with every container running, until every
Debian guest is up). Prints one line per run and the ratio; writes JSON to
bench/results/boot_storm.json. Installs Debian's lxc if it is missing (apt-get).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from autostart_peer import LxcAutostart  # noqa: E402
from common import BenchError, hierarchies, ratio  # noqa: E402
from ctd_side import CtdDaemon, finish  # noqa: E402
from debian_part import BootFailed, wait_booted  # noqa: E402
from peers import ensure_installed, version  # noqa: E402

DEBIAN = "debian-12"
Run = Callable[[list[str]], "tuple[int, str]"]


def kill_all(d: CtdDaemon) -> None:
    """ctd and every container init SIGKILLed by PID (a host crash, as the tests simulate it)."""
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


def kill_and_reboot(d: CtdDaemon, boot_id: Path) -> None:
    kill_all(d)
    boot_id.write_text(f"{uuid.uuid4()}\n")


def all_booted(names: list[str], run_in: Callable[[str], Run], t0: float,
               alive: Callable[[str], bool] = lambda name: True) -> tuple[float | None, list[str]]:
    """Seconds from t0 until the last Debian guest's systemd answered (None: there were none),
    and what each that is not 'running' said (alive: whether the container runs at all now)."""
    if not names:
        return None, []
    odd = []
    for name in names:
        if not alive(name):
            odd.append(f"{name}: not running")
            continue
        try:
            state = wait_booted(run_in(name), timeout=120)
        except BootFailed as exc:
            state = str(exc)
        if state != "running":
            odd.append(f"{name}: {state}")
    return round(time.monotonic() - t0, 2), odd


def one_storm(d: CtdDaemon, boot_id: Path, count: int, debian: list[str], concurrency: int) -> dict:
    d.extra_settings = f'default_network = ""\nboot_id_file = "{boot_id}"\nboot_concurrency = {concurrency}\n'
    kill_and_reboot(d, boot_id)
    t0 = time.monotonic()
    d.start()
    t_api = time.monotonic() - t0
    while True:
        boot = d.client.get("/1.0")["boot"]
        if boot["state"] == "done":
            break
        if time.monotonic() - t0 > 900:
            raise BenchError(f"the boot sequence did not finish in 900 s: {boot.get('group')}")
        time.sleep(0.05)
    t_all = time.monotonic() - t0
    booted, odd = all_booted(debian, lambda n: lambda argv: d.exec_output(n, argv), t0)
    started = sum(1 for s in boot.get("steps", []) if s["outcome"] == "started")
    running = sum(1 for i in d.client.get("/1.0/instances")["instances"] if i["state"] == "running")
    return {"containers": count, "boot_concurrency": concurrency, "api_answers_s": round(t_api, 2),
            "all_running_s": round(t_all, 2), "started": started, "running": running,
            "debian_booted_s": booted, "debian_not_running": odd,
            "per_container_ms": round((t_all - t_api) * 1000 / max(count, 1), 1)}


def lxc_storm(d: CtdDaemon, work: Path, busybox: list[str], debian: list[str]) -> tuple[dict, list[str]]:
    """lxc-autostart on the roots of ctd's containers, ctd and its containers down meanwhile."""
    ensure_installed()
    kill_all(d)   # the roots are free (the pool stays mounted: ctd leaves it so across restarts)
    peer = LxcAutostart(work, d.cgroup_name.removeprefix("ctd-bench-"), hierarchies())
    roots = d.state_dir / "storage" / "instances"
    try:
        for name in busybox + debian:
            peer.add(name, roots / name / "rootfs", system=name in debian)
        t0 = time.monotonic()
        took = peer.storm()
        running = set(peer.running())
        print(f"lxc-autostart returned after {took:.2f} s, {len(running)} running", flush=True)
        booted, odd = all_booted(debian, lambda n: lambda argv: peer.attach(n, argv), t0,
                                 lambda n: n in peer.running())
        result = {"containers": len(busybox) + len(debian), "lxc_autostart_s": round(took, 2),
                  "running": len(running), "debian_booted_s": booted, "debian_not_running": odd,
                  "per_container_ms": round(took * 1000 / max(len(busybox) + len(debian), 1), 1),
                  "lxc": version(["lxc-start", "--version"])}
    finally:
        errors = peer.cleanup()
    return result, errors


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def make_containers(d: CtdDaemon, count: int, debian_count: int) -> tuple[list[str], list[str]]:
    busybox = [f"bench-b{n}" for n in range(count)]
    debian = [f"bench-d{n}" for n in range(debian_count)]
    if debian:   # a minute or more: the client polls the operation instead of one long request
        d.build_template(DEBIAN, progress=lambda line: None)
    for name in busybox:
        d.created.add(name)
        d.client.run("POST", "/1.0/instances", {"name": name, "template": "busybox", "onboot": True})
        d.start_ct(name)
    for name in debian:
        d.created.add(name)
        d.client.run("POST", "/1.0/instances", {"name": name, "template": DEBIAN, "onboot": True})
        d.start_ct(name)
    return busybox, debian


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--containers", type=int, default=200, help="busybox containers")
    p.add_argument("--debian", type=int, default=20, help="Debian 12 (systemd) containers")
    p.add_argument("--concurrency", type=int, action="append", help="boot_concurrency (repeatable; default 4)")
    p.add_argument("--no-lxc", action="store_true", help="ctd only, no lxc-autostart run")
    p.add_argument("--idmap-base", type=int, default=3_000_000_000,
                   help="first host id of the bench ctd's area (600M ids; another live ctd's must not overlap)")
    p.add_argument("--workdir", default="/var/tmp")
    p.add_argument("--output", default=str(HERE / "results" / "boot_storm.json"))
    args = p.parse_args()
    if os.geteuid() != 0:
        print("boot_storm: needs root", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="ctd-bootstorm-", dir=args.workdir))
    boot_id = work / "boot_id"
    boot_id.write_text(f"{uuid.uuid4()}\n")
    d = CtdDaemon(work, f"boot{uuid.uuid4().hex[:4]}", idmap_base=args.idmap_base)
    # No NIC (no host bridge of the bench's): the storm times the starts themselves.
    d.extra_settings = f'default_network = ""\nboot_id_file = "{boot_id}"\n'
    out: dict = {"host": {"machine": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
                          "loadavg_before": os.getloadavg()}, "results": []}
    errors: list[str] = []
    try:
        d.start()
        d.build_template("busybox")
        busybox, debian = make_containers(d, args.containers, args.debian)
        kinds = f"{len(busybox)} busybox + {len(debian)} Debian containers"
        for concurrency in args.concurrency or [4]:
            r = one_storm(d, boot_id, args.containers, debian, concurrency)
            out["results"].append(r)
            print(f"ctd, {kinds}, boot_concurrency {concurrency}: API answers after {r['api_answers_s']} s, "
                  f"all {r['started']} started after {r['all_running_s']} s, every Debian up after "
                  f"{r['debian_booted_s']} s {r['debian_not_running'] or ''}", flush=True)
        if not args.no_lxc:
            lxc, peer_errors = lxc_storm(d, work, busybox, debian)
            errors += peer_errors
            out["lxc_autostart"] = lxc
            print(f"lxc-autostart ({lxc['lxc']}), the same {kinds} on the same roots: all {lxc['running']} "
                  f"running after {lxc['lxc_autostart_s']} s, every Debian up after {lxc['debian_booted_s']} s "
                  f"{lxc['debian_not_running'] or ''}", flush=True)
            for r in out["results"]:
                r["ratio_all_running_vs_lxc"] = _round(ratio(r["all_running_s"], lxc["lxc_autostart_s"]))
                r["ratio_debian_up_vs_lxc"] = _round(ratio(r["debian_booted_s"], lxc["debian_booted_s"]))
                print(f"  ctd/lxc at boot_concurrency {r['boot_concurrency']}: all running "
                      f"{r['ratio_all_running_vs_lxc']}, every Debian up {r['ratio_debian_up_vs_lxc']}")
            d.start()   # the same boot id: it starts nothing, and cleans up below
    finally:
        if d.proc is None or d.proc.poll() is not None:
            try:
                d.start()
            except BenchError as exc:
                errors.append(str(exc))
        errors += d.teardown()
    out["host"]["loadavg_after"] = os.getloadavg()
    out["errors"] = errors
    return finish(args.output, out, errors, work, label="cleanup")


if __name__ == "__main__":
    sys.exit(main())
