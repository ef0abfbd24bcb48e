"""(vm backup, issue #16) What a VM's backup costs: live (QMP blockdev-backup while the VM runs)
next to stopped (qemu-img convert), and the restore (checks + qcow2 -> raw).

A scratch ctd makes a blank VM with a --disk MiB disk, writes --data MiB of random bytes at
its start (on the host, before the VM ever ran: the VM holds data without needing a guest OS),
starts it (the firmware idles: QEMU and its block layer are what is measured), then times:
- backup while it runs (and that the same QEMU still runs afterwards),
- backup after it is stopped,
- restore of the live backup under a new name,
and prints seconds, file sizes and MB/s of data.

  sudo .venv/bin/python bench/vm_backup.py [--disk 2048] [--data 512] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ctd_side import blank_vm, scratch_run

MiB = 1 << 20


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--disk", type=int, default=2048, help="VM disk size, MiB")
    ap.add_argument("--data", type=int, default=512, help="random data written into it, MiB")
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    out: dict[str, float | int] = {}
    with scratch_run("ctd-vmbackup-", args.workdir, "vb") as (d, work):
        c = d.client
        blank_vm(d, "vbench", args.disk, args.data)
        pid = d.init_pid("vbench")
        live, stopped = work / "live.bak", work / "stopped.bak"
        out["live_s"] = timed(lambda: c.run("POST", "/1.0/instances/vbench/backup", {"file": str(live)}))
        inst = c.get("/1.0/instances/vbench")["instance"]
        if inst["state"] != "running" or inst["pid"] != pid:
            raise SystemExit("the VM did not keep running through its backup")
        d.stop_ct("vbench")
        out["stopped_s"] = timed(lambda: c.run("POST", "/1.0/instances/vbench/backup", {"file": str(stopped)}))
        d.created.add("vrest")
        out["restore_s"] = timed(lambda: c.run("POST", "/1.0/restore", {"file": str(live), "name": "vrest"}))
        out["live_file_mib"] = live.stat().st_size // MiB
        out["stopped_file_mib"] = stopped.stat().st_size // MiB
        for key in ("live", "stopped", "restore"):
            out[f"{key}_mb_s"] = round(args.data * MiB / 1e6 / out[f"{key}_s"], 1)
        out.update({k: round(v, 2) for k, v in out.items() if isinstance(v, float)})
        print(json.dumps({"disk_mib": args.disk, "data_mib": args.data, **out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
