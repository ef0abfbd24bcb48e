"""Does a daemon's state match the host? Everything ctd may leave behind, looked up on the host.

audit(d) returns one line per disagreement (an empty list: state and reality agree):
the instance list against /proc, storage dirs, cgroups, veths, nft rules, mounts, btrfs
subvolumes, loop devices and processes. Everything is scoped to the daemon's own names
(state dir, cgroup name, NIC prefix, nft table, id ranges): other daemons may run beside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from ctd.storage.pool import find_mount, loops_backing, parse_mountinfo

OK_STATES = ("running", "stopped", "suspended")


def _proc_uid(pid: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _pids() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit()]


def _cgroup_of(pid: int | str) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def _other_daemons(pid: str, mine: str) -> bool:
    """Is pid in the cgroup of another test daemon (which may use the same id range)?"""
    groups = _cgroup_of(pid)
    return "/ctd-test-" in groups and f"/{mine}/" not in groups


def _is_our_lxcfs(pid: str, state_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # gone meanwhile
    return b"lxcfs" in cmdline and os.fsencode(str(state_dir)) in cmdline


def _ppid(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _descends(pid: str, ancestor: int | None) -> bool:
    """Is pid ancestor itself or below it (the spawner and what it forks)?"""
    current: int | None = int(pid)
    for _ in range(64):
        if current is None or current <= 1:
            return False
        if current == ancestor:
            return True
        current = _ppid(str(current))
    return False


def nic_links(prefix: str) -> dict[str, int]:
    """Host links made by a daemon with this NIC prefix -> the instance id they belong to
    (veth host ends 'xy101.0', container ends before the move 'xyp101.0', ifbs 'xyi101.0')."""
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    pattern = re.compile(rf"^{prefix}[pi]?(\d+)\.(\d+)$")
    found = {}
    for line in out.splitlines():
        name = line.split()[0].split("@")[0]
        m = pattern.match(name)
        if m:
            found[name] = int(m.group(1))
    return found


def nft_nic_ids(table: str, prefix: str) -> set[int]:
    """Instance ids that the daemon's anti-spoofing table still has rules for."""
    ids: set[int] = set()
    for family in ("bridge", "inet"):
        r = subprocess.run(["nft", "list", "table", family, table], capture_output=True, text=True)
        if r.returncode != 0:
            continue
        ids |= {int(m) for m in re.findall(rf'"{prefix}(\d+)\.\d+"', r.stdout)}
        ids |= {int(m) for m in re.findall(rf"nic_{prefix}(\d+)_\d+", r.stdout)}
    return ids


def state_dir_mounts(state_dir: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    root = str(state_dir)
    return [e.mount_point for e in parse_mountinfo(text)
            if e.mount_point == root or e.mount_point.startswith(root + "/")]


def subvolumes(storage_root: Path) -> set[str] | None:
    """Paths (relative to the storage root) of every btrfs subvolume below it; None if not btrfs."""
    try:
        import btrfsutil
    except ImportError:
        return None
    try:
        if not btrfsutil.is_subvolume(storage_root):
            return None
        return {path for path, _ in btrfsutil.SubvolumeIterator(str(storage_root))}
    except btrfsutil.BtrfsUtilError:
        return None


def audit(d) -> list[str]:  # type: ignore[no-untyped-def]
    """Disagreements between what daemon d says and what the host has (see module doc)."""
    problems: list[str] = []
    insts = d.client.get("/1.0/instances")["instances"]
    by_name = {i["name"]: i for i in insts}
    running = {i["name"]: i for i in insts if i["state"] in ("running", "suspended")}  # a process exists
    running_ids = {i["id"] for i in running.values()}
    storage = d.state_dir / "storage"

    # -- the list against /proc and storage
    for i in insts:
        name = i["name"]
        if i["state"] not in OK_STATES:
            problems.append(f"{name} is listed as {i['state']!r} with nothing in progress")
        if not d.rootfs(name).is_dir():
            problems.append(f"{name} is listed but has no root in storage")
        elif i.get("type", "container") == "container" and i.get("hostname"):
            # create writes the guest's settings; a listed instance without them is half-made
            etc_hostname = d.rootfs(name) / "etc" / "hostname"
            written = etc_hostname.read_text().strip() if etc_hostname.is_file() and not etc_hostname.is_symlink() else None
            if written != i["hostname"]:
                problems.append(f"{name} is listed but its guest settings were never written "
                                f"(/etc/hostname: {written!r}, hostname {i['hostname']!r})")
        if i["state"] in ("running", "suspended"):
            pid = i["pid"]
            if not pid or not Path(f"/proc/{pid}").exists():
                problems.append(f"{name} is listed as running but its init (pid {pid}) does not exist")
            elif f"/{d.cgroup_name}/ct-{name}" not in _cgroup_of(pid):
                problems.append(f"{name} is listed as running but pid {pid} is not in its cgroup")
    inst_dir = storage / "instances"
    if inst_dir.is_dir():
        for p in inst_dir.iterdir():
            if p.name not in by_name:
                problems.append(f"storage holds {p.name} but no instance of that name is listed")
                continue
            for leftover in (".rootfs-new", ".rootfs-old"):
                if (p / leftover).exists():
                    problems.append(f"storage of {p.name} still has {leftover}")
            snaps = p / "snapshots"
            if snaps.is_dir():
                problems += [f"storage of {p.name} has a half-made snapshot {s.name}"
                             for s in snaps.iterdir() if s.name.startswith(".")]
    tmpl_dir = storage / "templates"
    if tmpl_dir.is_dir():
        problems += [f"half-built template {p.name}" for p in tmpl_dir.iterdir() if p.name.startswith(".")]

    # -- cgroups: one per running container (where ctd says it is: a cgroup2 directory may be
    #    named after the standby it started in), one per standby init waiting, nothing else
    daemon = d.proc.pid if d.proc else None
    owned = {path for i in running.values() for path in (i.get("cgroups") or {}).values()}
    for base in d.cgroup_dirs():
        for child in base.iterdir():
            if not child.is_dir() or str(child) in owned:
                continue
            procs = (child / "cgroup.procs").read_text().split() if (child / "cgroup.procs").exists() else []
            if child.name.startswith("standby-") and all(_descends(p, daemon) for p in procs):
                continue
            if child.name == "lxcfs" and all(_is_our_lxcfs(p, d.state_dir) for p in procs):
                continue  # lxcfs runs in a cgroup of its own and outlives ctd
            problems.append(f"cgroup {child} is left over (processes: {procs or 'none'})")

    # -- id ranges: no two instances share host ids
    spans = sorted((i["idmap"]["uid_base"], i["idmap"]["uid_base"] + i["idmap"]["count"], i["name"])
                   for i in insts if i.get("idmap"))
    for (lo1, hi1, n1), (lo2, hi2, n2) in zip(spans, spans[1:]):
        if lo2 < hi1:
            problems.append(f"{n1} and {n2} share host ids ({lo2}..{min(hi1, hi2) - 1})")

    # -- processes: nothing runs in the id range of an instance that is not running
    ranges = {i["name"]: (i["idmap"]["uid_base"], i["idmap"]["uid_base"] + i["idmap"]["count"])
              for i in insts if i["name"] not in running and i.get("idmap")}
    if ranges:
        for pid in _pids():
            uid = _proc_uid(pid)
            for name, (lo, hi) in ranges.items():
                if uid is not None and lo <= uid < hi and not _other_daemons(pid, d.cgroup_name):
                    problems.append(f"pid {pid} (uid {uid}) runs in the id range of {name}, which is not running")
    # ... and no daemon or spawner of this state dir but the current ones
    me = d.proc.pid if d.proc else None
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"ctd.daemon" in cmdline or b"ctd.instance.container.spawner" in cmdline
        if os.fsencode(str(d.state_dir)) in cmdline and ours and not _descends(pid, me):
            problems.append(f"a stray ctd process {pid} of this state dir is alive (not the daemon's, nor its spawner's)")

    # -- network: veths/ifbs and nft rules only for running instances
    for link, instance_id in nic_links(d.nic_prefix).items():
        if instance_id not in running_ids:
            problems.append(f"link {link} is left over (instance id {instance_id} is not running)")
    table = d.cgroup_name.replace("-", "_")
    for instance_id in nft_nic_ids(table, d.nic_prefix) - running_ids:
        problems.append(f"nft table {table} still filters NICs of instance id {instance_id}, which is not running")

    # -- mounts under the state dir: the pool and lxcfs, nothing else
    allowed = {str(storage), str(d.state_dir / "lxcfs" / "mnt")}
    problems += [f"mount {m} is left over" for m in state_dir_mounts(d.state_dir) if m not in allowed]

    # -- btrfs: subvolumes only for templates, instance roots and their snapshots
    subs = subvolumes(storage)
    if subs is not None:
        expected_prefixes = ("templates/",)
        for sub in sorted(subs):
            parts = sub.split("/")
            if sub.startswith(expected_prefixes) and len(parts) == 3 and parts[2] == "rootfs":
                continue
            if parts[0] == "instances" and len(parts) >= 3 and parts[1] in by_name and (
                    parts[2:] == ["rootfs"] or (len(parts) == 4 and parts[2] == "snapshots"
                                                and not parts[3].startswith("."))):
                continue
            problems.append(f"btrfs subvolume {sub} is left over")

    # -- the pool's loop device: exactly one while it is mounted
    image = d.state_dir / "pool.img"
    if image.exists():
        loops = loops_backing(image)
        if len(loops) != 1 or find_mount(storage) is None:
            problems.append(f"pool image: loop devices {loops}, mounted: {find_mount(storage) is not None}")
    return problems


def settled_audit(d, timeout: float = 15.0) -> list[str]:  # type: ignore[no-untyped-def]
    """audit() until it finds nothing (a container that was told to stop may still be ending)."""
    deadline = time.monotonic() + timeout
    while True:
        problems = audit(d)
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.3)
