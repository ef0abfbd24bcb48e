"""Incremental backups: a running Debian 12 container with 10 MB changed, backed up
incrementally (btrfs send -p against the previous backup) next to a full backup of it.

    sudo /work/main/.venv/bin/python bench/backup_chain.py [--rounds 3] [--template debian-12]

A private ctd (bench/ctd_side.py) builds the template (mmdebstrap from the host's apt sources,
about a minute), creates and starts one container, then per round: 10 MB of fresh random data is
written inside the guest (half into a new file, half over an existing one), then timed: the next
backup of its chain into backup_dir (incremental), and a full backup of the same root to a file
(what the chain's first backup costs too). Bytes are the files' sizes (zstd level 3 inside). A
backup with nothing changed is measured once. Prints a table and writes JSON to
bench/results/backup_chain.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import BenchError  # noqa: E402
from ctctl.client import ApiError  # noqa: E402
from ctd_side import CtdDaemon, finish  # noqa: E402

NAME = "bench-bk"


def timed_backup(d: CtdDaemon, body: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result = d.client.run("POST", f"/1.0/instances/{NAME}/backup", body)
    return time.perf_counter() - t0, result


def change_10mb(d: CtdDaemon, round_no: int) -> None:
    """5 MB into a new file and 5 MB over the middle of a file the previous round wrote."""
    script = (f"dd if=/dev/urandom of=/root/new-{round_no} bs=1M count=5 status=none && "
              "touch /root/rewritten && "
              "dd if=/dev/urandom of=/root/rewritten bs=1M count=5 seek=2 conv=notrunc status=none && sync")
    code = d.exec(NAME, ["/bin/sh", "-c", script])
    if code != 0:
        raise BenchError(f"writing 10 MB in the guest failed ({code})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--template", default="debian-12")
    p.add_argument("--workdir", default="/var/tmp")
    p.add_argument("--output", default=str(HERE / "results" / "backup_chain.json"))
    args = p.parse_args()
    if os.geteuid() != 0:
        print("backup_chain: needs root", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="ctd-backupbench-", dir=args.workdir))
    d = CtdDaemon(work, f"bk{uuid.uuid4().hex[:4]}", idmap_base=3_200_000_000)
    d.extra_settings = f'default_network = ""\nbackup_dir = "{work / "backups"}"\nbackup_full_every = 100\n'
    rows: list[dict] = []
    errors: list[str] = []
    try:
        d.start()
        if d.client.get("/1.0")["storage"]["driver"] != "btrfs":
            raise BenchError("incremental backups need btrfs storage (install btrfs-progs)")
        t0 = time.perf_counter()
        d.build_template(args.template, progress=lambda line: None)   # polls: a long build
        print(f"template {args.template} built in {time.perf_counter() - t0:.0f} s", flush=True)
        d.create(NAME, template=args.template)
        d.client.run("PATCH", f"/1.0/instances/{NAME}", {"backup_keep": 100})
        d.start_ct(NAME)
        time.sleep(5)   # let the guest settle (journal, first writes)
        secs, first = timed_backup(d, {})
        rows.append({"what": "chain's first (full)", "seconds": secs, "bytes": first["size"], "kind": first["kind"]})
        secs, same = timed_backup(d, {})
        rows.append({"what": "incremental, nothing changed", "seconds": secs, "bytes": same["size"],
                     "kind": same["kind"]})
        for n in range(args.rounds):
            change_10mb(d, n)
            secs, inc = timed_backup(d, {})
            rows.append({"what": "incremental, 10 MB changed", "seconds": secs, "bytes": inc["size"],
                         "kind": inc["kind"]})
            secs, full = timed_backup(d, {"file": str(work / f"full-{n}.bak")})
            rows.append({"what": "full, same root", "seconds": secs, "bytes": full["size"], "kind": "full"})
            (work / f"full-{n}.bak").unlink()
    except (BenchError, ApiError) as exc:
        errors.append(str(exc))
    finally:
        errors += d.teardown()
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["what"], []).append(row)
    print(f"{'backup':32} {'n':>2} {'seconds (median)':>17} {'MB (median)':>12}")
    summary = {}
    for what, group in groups.items():
        sec = statistics.median(r["seconds"] for r in group)
        mb = statistics.median(r["bytes"] for r in group) / 1e6
        summary[what] = {"n": len(group), "seconds": round(sec, 2), "mb": round(mb, 2)}
        print(f"{what:32} {len(group):>2} {sec:>17.2f} {mb:>12.2f}")
    return finish(args.output, {"rows": rows, "summary": summary, "errors": errors}, errors, work)


if __name__ == "__main__":
    sys.exit(main())
