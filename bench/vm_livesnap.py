"""(vm agent, issue #20) What a live VM snapshot stalls the guest, and (--debian) the round trip
of `exec` through the guest agent next to `ssh` to the same guest.

A scratch ctd makes a VM with a --disk MiB disk holding --data MiB of random bytes (written on
the host before it ever ran), starts it and takes --count live snapshots, reporting ctd's
`paused_ms` (QMP stop .. cont around the reflink: the guest's stall) and the whole request's
time. With --debian it builds the debian-12 template, boots a VM from it (minutes under TCG),
waits for its agent, then times --count `exec true` through the agent (the API's WebSocket, as
ctctl does it) and `ssh root@VM true` (a new connection each, key auth), and its live snapshots
(agent freeze + pause).

  sudo .venv/bin/python bench/vm_livesnap.py [--count 10] [--disk 2048] [--data 512] [--debian]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import summary
from ctd_side import blank_vm, scratch_run


def snapshots(c, name: str, count: int) -> dict:  # type: ignore[no-untyped-def]
    paused, copy, total, consistency = [], [], [], ""
    for i in range(count):
        t0 = time.perf_counter()
        r = c.run("POST", f"/1.0/instances/{name}/snapshots", {"name": f"b{i}"})
        total.append((time.perf_counter() - t0) * 1000)
        paused.append(float(r["paused_ms"]))
        copy.append(float(r["copy_ms"]))
        consistency = r["consistency"].split(":")[0]
    return {"paused_ms": summary(paused), "copy_ms": summary(copy), "request_ms": summary(total),
            "consistency": consistency}


def debian(d, work: Path, count: int) -> dict:  # type: ignore[no-untyped-def]
    c = d.client
    d.build_template("debian-12", progress=lambda line: None)   # polls: no request held for minutes
    key = work / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    d.create_network("vlsnet")
    c.run("POST", "/1.0/instances", {"name": "vdeb", "type": "vm", "template": "debian-12", "vm": {"disk": "2G"},
                                     "limits": {"ram": "1G"}, "nics": [{"network": "vlsnet"}],
                                     "ssh_keys": [key.with_suffix(".pub").read_text().strip()]})
    d.created.add("vdeb")
    d.start_ct("vdeb")
    address = d.instance("vdeb")["nics"][0]["addresses"][0]
    deadline = time.monotonic() + 900

    def agent_up() -> bool:
        try:
            return d.exec("vdeb", ["true"]) == 0
        except Exception:  # noqa: BLE001 - 409 until the guest's agent runs
            return False

    while not agent_up():
        if time.monotonic() > deadline:
            raise SystemExit("the guest agent never answered")
        time.sleep(3)
    ssh = ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "BatchMode=yes", f"root@{address}", "true"]
    while subprocess.run(ssh, capture_output=True).returncode != 0:
        time.sleep(3)
    agent, via_ssh = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        assert d.exec("vdeb", ["true"]) == 0
        agent.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        subprocess.run(ssh, check=True, capture_output=True)
        via_ssh.append((time.perf_counter() - t0) * 1000)
    return {"exec_agent_ms": summary(agent), "exec_ssh_ms": summary(via_ssh),
            "debian_snapshot": snapshots(c, "vdeb", count)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--disk", type=int, default=2048, help="VM disk size, MiB")
    ap.add_argument("--data", type=int, default=512, help="random data written into it, MiB")
    ap.add_argument("--debian", action="store_true", help="also a booted Debian VM: agent exec vs ssh")
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    out: dict = {}
    with scratch_run("ctd-vmlivesnap-", args.workdir, "vb") as (d, work):
        c = d.client
        blank_vm(d, "vsnap", args.disk, args.data)
        out["blank_vm_snapshot"] = snapshots(c, "vsnap", args.count)
        out["storage"] = d.storage_info().get("driver")
        if args.debian:
            out.update(debian(d, work, args.count))
        print(json.dumps({"disk_mib": args.disk, "data_mib": args.data, **out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
