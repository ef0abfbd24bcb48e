"""Experiment for issue #22's page-cache sharing: does an overlayfs whose lower layer is an
idmapped mount of a read-only btrfs template work for a container's user namespace, and do two
such containers share the page cache of a template file?

    sudo /work/main/.venv/bin/python bench/overlay_share.py [--size-mb 200]     # ~30 s

Everything happens in a private mount namespace of this process, on a throwaway btrfs loop file
(direct I/O on the loop, so pool.img pages do not count) under --workdir. Two "containers" are
two user namespaces, each mapping 0-65535 to its own host id range (as ctd's do), held by a
child process. For each way of giving a container its root, the 200 MB template file is dropped
from the cache and read (as the container's root, through its own root) by container 1, then by
container 2; fincore says how much of each file's data is cached:

  snapshot     each container's root a writable btrfs snapshot of the template (ctd today);
               idmapped bind of it (what ctd's spawner does)
  ovl-host     overlayfs mounted by the host: lower = idmapped clone of the template, upper and
               work = idmapped clone of the container's own subvolume
  ovl-userns   overlayfs mounted inside the container's user namespace (and a mount namespace it
               owns) over the same idmapped layers

Then, for the overlay ways: container 1 writes to the file (copy-up into its upper), and both
read it back (container 2 must still see the template's bytes). Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ctd.linux import syscalls as sc  # noqa: E402

MiB = 1 << 20
IDS = 65536
BASES = (3_900_000_000, 3_900_000_000 + IDS)  # two private id ranges, far above ctd's default areas
POSIX_FADV_DONTNEED = 4


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def cached_mib(path: Path) -> float:
    """Cached bytes of path's own inode (fincore), in MiB."""
    out = run("fincore", "--bytes", "--noheadings", "--output", "RES", str(path)).split()
    return int(out[0]) / MiB if out else 0.0


def drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class Userns:
    """A child process in a new user namespace mapping 0..65535 to base..; it runs commands
    (read/write a file, mount an overlay) for us over a pipe, as root of that namespace."""

    def __init__(self, base: int) -> None:
        self.base = base
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(w1)
            os.close(r2)
            try:
                sc.unshare(sc.CLONE_NEWUSER)
                os.write(w2, b"u")
                os.read(r1, 1)  # the map is written
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
                os.write(w2, b"m")
                self._serve(os.fdopen(r1, "r"), os.fdopen(w2, "w"))
            finally:
                os._exit(0)
        os.close(r1)
        os.close(w2)
        self.pid = pid
        assert os.read(r2, 1) == b"u"
        Path(f"/proc/{pid}/uid_map").write_text(f"0 {base} {IDS}\n")
        Path(f"/proc/{pid}/setgroups").write_text("deny\n")
        Path(f"/proc/{pid}/gid_map").write_text(f"0 {base} {IDS}\n")
        os.write(w1, b"g")
        assert os.read(r2, 1) == b"m"
        self.cmd_w = os.fdopen(w1, "w")
        self.ans_r = os.fdopen(r2, "r")
        self.ns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)

    @staticmethod
    def _serve(cmds, answers) -> None:  # type: ignore[no-untyped-def]
        for line in cmds:
            req = json.loads(line)
            try:
                if req["op"] == "read":
                    h = 0
                    with open(req["path"], "rb") as fh:
                        while chunk := fh.read(4 * MiB):
                            h ^= hash(chunk[:64])
                    with open(req["path"], "rb") as fh:
                        head = fh.read(16).hex()
                    answers.write(json.dumps({"ok": True, "head": head}) + "\n")
                elif req["op"] == "write":
                    with open(req["path"], "r+b") as fh:
                        fh.write(bytes.fromhex(req["data"]))
                    answers.write(json.dumps({"ok": True}) + "\n")
                elif req["op"] == "mount_overlay":
                    sc.unshare(sc.CLONE_NEWNS)
                    sc.mount("overlay", req["target"], "overlay", 0, req["options"])
                    answers.write(json.dumps({"ok": True}) + "\n")
                elif req["op"] == "unlink":
                    os.unlink(req["path"])
                    answers.write(json.dumps({"ok": True}) + "\n")
                elif req["op"] == "rename":
                    os.rename(req["path"], req["to"])
                    answers.write(json.dumps({"ok": True}) + "\n")
                elif req["op"] == "exists":
                    answers.write(json.dumps({"ok": True, "exists": os.path.lexists(req["path"])}) + "\n")
                elif req["op"] == "stat":
                    st = os.stat(req["path"])
                    answers.write(json.dumps({"ok": True, "uid": st.st_uid}) + "\n")
            except OSError as exc:
                answers.write(json.dumps({"ok": False, "error": str(exc)}) + "\n")
            answers.flush()

    def ask(self, **req: str) -> dict:
        self.cmd_w.write(json.dumps(req) + "\n")
        self.cmd_w.flush()
        return json.loads(self.ans_r.readline())

    def close(self) -> None:
        self.cmd_w.close()
        os.kill(self.pid, 9)  # (a later child holds our pipe's write end too: no EOF to wait for)
        os.waitpid(self.pid, 0)
        os.close(self.ns_fd)


def idmapped_at(source: Path, target: Path, ns: Userns) -> None:
    target.mkdir(parents=True, exist_ok=True)
    fd = sc.private_clone(str(source), recursive=False, userns_fd=ns.ns_fd)
    try:
        sc.move_mount(fd, str(target))
    finally:
        os.close(fd)


def measure(way: str, roots: list[Path], nss: list[Userns], tmpl_file: Path, rel: str,
            uppers: list[Path]) -> dict:
    """Cold read through container 1, then through container 2; fincore after each."""
    drop(tmpl_file)
    out: dict = {"way": way}
    files = [tmpl_file] + [r / rel for r in uppers]
    for f in files[1:]:
        if f.exists():
            drop(f)
    base = sum(cached_mib(f) for f in files if f.exists())
    for i, (root, ns) in enumerate(zip(roots, nss, strict=True)):
        t0 = time.perf_counter()
        ans = ns.ask(op="read", path=str(root / rel))
        if not ans["ok"]:
            out[f"c{i + 1}_error"] = ans["error"]
            return out
        out[f"c{i + 1}_read_s"] = round(time.perf_counter() - t0, 2)
        out[f"cached_after_c{i + 1}_mib"] = round(sum(cached_mib(f) for f in files if f.exists()) - base, 1)
        out[f"c{i + 1}_uid_inside"] = ns.ask(op="stat", path=str(root / rel)).get("uid")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (loop device, mounts, user namespaces with chosen maps)")
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)  # nothing of ours reaches the host
    work = Path(tempfile.mkdtemp(prefix="ctd-ovl-", dir=args.workdir))
    work.chmod(0o755)  # the containers' roots walk through it
    image, mnt = work / "pool.img", work / "mnt"
    mnt.mkdir()
    with image.open("wb") as fh:
        fh.truncate(max(2048, 3 * args.size_mb) * MiB)
    run("mkfs.btrfs", "--quiet", str(image))
    device = run("losetup", "--find", "--show", "--direct-io=on", str(image)).strip()
    nss: list[Userns] = []
    results = []
    try:
        sc.mount(device, str(mnt), "btrfs")
        tmpl = mnt / "template"
        run("btrfs", "subvolume", "create", str(tmpl))
        (tmpl / "usr").mkdir()
        rel = "usr/big"
        (tmpl / "usr/gone").write_text("x")
        (tmpl / "etc").mkdir()
        (tmpl / "etc/f").write_text("x")
        with (tmpl / rel).open("wb") as fh:
            for _ in range(args.size_mb):
                fh.write(os.urandom(MiB))
        run("btrfs", "property", "set", str(tmpl), "ro", "true")
        os.sync()
        nss = [Userns(b) for b in BASES]

        # 1. ctd today: a writable snapshot per container, idmapped into its namespace
        roots, uppers = [], []
        for i, ns in enumerate(nss):
            snap = mnt / f"snap{i + 1}"
            run("btrfs", "subvolume", "snapshot", str(tmpl), str(snap))
            idmapped_at(snap, work / f"snaproot{i + 1}", ns)
            roots.append(work / f"snaproot{i + 1}")
            uppers.append(snap)
        results.append(measure("snapshot", roots, nss, tmpl / rel, rel, uppers))

        # 2./3. overlays: lower = idmapped template, upper/work on the container's own subvolume
        for way in ("ovl-host", "ovl-userns"):
            roots, uppers = [], []
            for i, ns in enumerate(nss):
                sub = mnt / f"{way}-c{i + 1}"
                run("btrfs", "subvolume", "create", str(sub))
                (sub / "upper").mkdir()
                (sub / "work").mkdir()
                lower_m, sub_m, root = (work / f"{way}{i + 1}-{n}" for n in ("lower", "sub", "root"))
                idmapped_at(tmpl, lower_m, ns)
                idmapped_at(sub, sub_m, ns)
                root.mkdir()
                opts = f"lowerdir={lower_m},upperdir={sub_m}/upper,workdir={sub_m}/work"
                if way == "ovl-userns":  # trusted.* xattrs are the host's: user.overlay.* instead
                    opts += ",userxattr"
                if way == "ovl-host":
                    try:
                        sc.mount("overlay", str(root), "overlay", 0, opts)
                    except OSError as exc:
                        results.append({"way": way, "mount_error": str(exc)})
                        break
                else:
                    ans = ns.ask(op="mount_overlay", target=str(root), options=opts)
                    if not ans["ok"]:
                        results.append({"way": way, "mount_error": ans["error"]})
                        break
                roots.append(root)
                uppers.append(sub / "upper")
            else:
                res = measure(way, roots, nss, tmpl / rel, rel, uppers)
                # container 1 writes: copy-up into its upper; container 2 still reads the template
                w = nss[0].ask(op="write", path=str(roots[0] / rel), data="c0ffee")
                res["write_c1"] = "ok" if w["ok"] else w["error"]
                res["c1_head_after_write"] = nss[0].ask(op="read", path=str(roots[0] / rel)).get("head", "")[:6]
                res["c2_head_after_write"] = nss[1].ask(op="read", path=str(roots[1] / rel)).get("head", "")[:6]
                up = uppers[0] / rel
                res["c1_upper_copy_mib"] = round(up.stat().st_size / MiB, 1) if up.exists() else 0
                res["c1_upper_owner_on_disk"] = up.stat().st_uid if up.exists() else None
                # a deleted template file (whiteout) and a renamed template directory
                d = nss[0].ask(op="unlink", path=str(roots[0] / "usr/gone"))
                res["unlink_c1"] = "ok" if d["ok"] else d["error"]
                res["c1_sees_deleted"] = nss[0].ask(op="exists", path=str(roots[0] / "usr/gone")).get("exists")
                res["c2_sees_deleted"] = nss[1].ask(op="exists", path=str(roots[1] / "usr/gone")).get("exists")
                m = nss[0].ask(op="rename", path=str(roots[0] / "etc"), to=str(roots[0] / "etc2"))
                res["rename_dir_c1"] = "ok" if m["ok"] else m["error"]
                res["c2_etc_intact"] = nss[1].ask(op="exists", path=str(roots[1] / "etc/f")).get("exists")
                results.append(res)
    finally:
        for ns in nss:
            ns.close()
        ours = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(str(work) + "/")]
        for target in reversed(ours):  # (in our private mount namespace only)
            subprocess.run(["umount", "-l", target], capture_output=True)
        subprocess.run(["losetup", "-d", device], capture_output=True)
        image.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], capture_output=True)
    print(f"kernel {os.uname().release}; a {args.size_mb} MiB file in a read-only btrfs template; "
          "page cache of the file's inodes (fincore) after each container's cold read")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
