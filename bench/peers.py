"""The peer runtimes, crun and LXC from Debian, on the same busybox root filesystem as ctd.

Both run the template's /sbin/init (busybox init: init + syslogd + a shell on the console),
exactly what a ctd container runs, and both get a console pty (crun: --console-socket, held
by crun_agent.py as conmon would; LXC: its monitor holds it), as ctd does. Their cgroups go
below our own cgroup in every hierarchy, in a directory of their own, like ctd's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import BenchError, Hierarchy, kill_cgroup_tree, make_cgroup_dir, remove_cgroup_tree, run_quiet

HERE = Path(__file__).resolve().parent


def ensure_installed() -> None:
    """apt-get install the peers if one is missing (they are on the dev machines already)."""
    missing = [b for b in ("crun", "runc", "lxc-start", "lxc-attach", "unshare") if shutil.which(b) is None]
    if not missing:
        return
    print(f"installing peers ({', '.join(missing)} missing): apt-get install -y crun runc lxc", flush=True)
    r = subprocess.run(["apt-get", "install", "-y", "crun", "runc", "lxc"], stdin=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if r.returncode != 0:
        raise BenchError("apt-get install -y crun runc lxc failed")


def version(argv: list[str]) -> str:
    r = run_quiet(argv)
    return (r.stdout or r.stderr).strip().splitlines()[0] if r.returncode == 0 and (r.stdout or r.stderr) else "?"


# ====================================================================== crun

def shifted_copy(source: Path, target: Path, offset: int) -> None:
    """A copy of source whose owners are shifted up by offset (a user namespace's root)."""
    shutil.copytree(source, target, symlinks=True)
    for path in [target, *target.rglob("*")]:
        st = path.lstat()
        os.lchown(path, st.st_uid + offset, st.st_gid + offset)
        if not path.is_symlink():
            os.chmod(path, st.st_mode & 0o7777)  # chown drops set-id bits; put them back



class Crun:
    """crun through crun_agent.py (private mount namespace, see there why)."""

    def __init__(self, workdir: Path, tag: str, rootfs: Path, hier: list[Hierarchy],
                 userns_base: int | None = None) -> None:
        """userns_base: run the containers in a user namespace too, root inside mapped to
        userns_base.. (65536 ids) outside, on a copy of rootfs owned by those ids: what ctd's
        unprivileged containers are, for a like-for-like comparison."""
        self.name = "crun" if userns_base is None else "crun_userns"
        self.userns_base = userns_base
        self.workdir = workdir / self.name
        self.root = self.workdir / "state"         # crun --root: our own container list
        self.bundles = self.workdir / "bundles"
        self.console_socket = self.workdir / "console.sock"
        self.rootfs = rootfs if userns_base is None else self.workdir / "rootfs"
        self.source_rootfs = rootfs
        self.cgroup_dir = f"ctd-bench-{tag}-{self.name.replace('_', '-')}"
        self.hier = hier
        self.agent: subprocess.Popen | None = None
        self.pids: dict[str, int] = {}
        self._spec: dict | None = None
        self._ids = 0

    # ------------------------------------------------------------- agent

    def start_agent(self) -> None:
        self.bundles.mkdir(parents=True, exist_ok=True)
        if self.userns_base is not None and not self.rootfs.exists():
            shifted_copy(self.source_rootfs, self.rootfs, self.userns_base)
        self.root.mkdir(parents=True, exist_ok=True)
        binds = []
        for h in self.hier:
            if h.unified:
                continue  # unmounted in the agent's namespace
            binds.append(f"{h.mountpoint}={make_cgroup_dir(h, self.cgroup_dir)}")
        argv = ["unshare", "-m", "--propagation", "private", sys.executable, str(HERE / "crun_agent.py"),
                "--console-socket", str(self.console_socket)]
        for b in binds:
            argv += ["--bind", b]
        self.agent = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
        hello = json.loads(self.agent.stdout.readline() or '{"ready": false, "error": "agent died"}')
        if not hello.get("ready"):
            raise BenchError(f"crun agent: {hello.get('error')}")

    def _ask(self, req: dict) -> dict:
        if self.agent is None or self.agent.poll() is not None:
            raise BenchError("the crun agent is not running")
        self._ids += 1
        self.agent.stdin.write(json.dumps({**req, "id": self._ids}) + "\n")
        self.agent.stdin.flush()
        while True:
            line = self.agent.stdout.readline()
            if not line:
                raise BenchError("the crun agent died")
            reply = json.loads(line)
            if reply.get("id") == self._ids:  # older ones: a request Ctrl-C interrupted
                return reply

    def _crun(self, *args: str, check: bool = True, cwd: Path | None = None) -> dict:
        reply = self._ask({"op": "run", "argv": ["crun", "--root", str(self.root), *args],
                           "cwd": str(cwd) if cwd else None})
        if check and reply["rc"] != 0:
            raise BenchError(f"crun {' '.join(args)}: {reply['err'].strip() or reply['rc']}")
        return reply

    # ------------------------------------------------------------- bundles

    def _base_spec(self) -> dict:
        """`crun spec` (as root), edited: our rootfs read-write, busybox init, a console, the
        same namespaces as ctd minus the user namespace (pid, net, ipc, uts, mount, cgroup)."""
        if self._spec is None:
            tmp = self.workdir / "spec"
            tmp.mkdir(parents=True, exist_ok=True)
            r = run_quiet(["crun", "spec"], cwd=tmp)
            if r.returncode != 0:
                raise BenchError(f"crun spec: {r.stderr.strip()}")
            spec = json.loads((tmp / "config.json").read_text())
            spec["root"] = {"path": str(self.rootfs), "readonly": False}
            spec["process"]["args"] = ["/sbin/init"]
            spec["process"]["terminal"] = True
            spec["process"]["env"] = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                      "TERM=linux", "container=crun"]
            ns = spec["linux"]["namespaces"]
            if not any(n["type"] == "cgroup" for n in ns):
                ns.append({"type": "cgroup"})
            if self.userns_base is not None:
                ns.append({"type": "user"})
                ids = [{"containerID": 0, "hostID": self.userns_base, "size": 65536}]
                spec["linux"]["uidMappings"] = ids
                spec["linux"]["gidMappings"] = ids
            # Neither ctd nor LXC (proc:mixed sys:ro) mounts cgroupfs in the guest.
            spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]
            self._spec = spec
        return json.loads(json.dumps(self._spec))

    def create(self, name: str) -> None:
        """A bundle: a directory with config.json (the rootfs is shared, as for LXC)."""
        spec = self._base_spec()
        spec["hostname"] = name
        spec["linux"]["cgroupsPath"] = f"/{name}"  # below self.cgroup_dir, see crun_agent.py
        bundle = self.bundles / name
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(spec))

    def start(self, name: str) -> float:
        """crun run -d; returns its wall time in ms (measured by the agent)."""
        bundle = self.bundles / name
        reply = self._crun("run", "-d", "--console-socket", str(self.console_socket),
                           "--pid-file", str(bundle / "pid"), name, cwd=bundle)
        self.pids[name] = int((bundle / "pid").read_text())
        return reply["ms"]

    def exec(self, name: str, argv: list[str]) -> float:
        return self._crun("exec", name, *argv)["ms"]

    def init_pid(self, name: str) -> int | None:
        return self.pids.get(name)

    def stop(self, name: str) -> float:
        """crun kill KILL, until init is gone."""
        reply = self._ask({"op": "kill_wait", "root": str(self.root), "name": name, "pid": self.pids[name]})
        if reply["rc"] != 0:
            raise BenchError(f"crun kill {name}: {reply['err'].strip()}")
        return reply["ms"]

    def delete(self, name: str) -> float:
        return self._crun("delete", name)["ms"]

    def force_delete(self, name: str) -> None:
        self._crun("delete", "-f", name, check=False)
        self.pids.pop(name, None)

    def destroy(self, name: str) -> None:
        shutil.rmtree(self.bundles / name, ignore_errors=True)

    def close_consoles(self) -> None:
        self._ask({"op": "close_consoles"})

    def running(self) -> list[str]:
        r = self._crun("list", "-q", check=False)
        return r["out"].split() if r["rc"] == 0 else []

    # ------------------------------------------------------------- cleanup

    def cleanup(self) -> list[str]:
        errors = []
        if self.agent is not None and self.agent.poll() is None:
            try:
                for name in set(self.running()) | set(self.pids):
                    self.force_delete(name)
                left = self.running()
                if left:
                    errors.append(f"crun containers left: {left}")
                self.close_consoles()
                self._ask({"op": "quit"})
            except Exception as exc:  # noqa: BLE001
                errors.append(f"crun clean-up: {exc}")
            try:
                self.agent.stdin.close()
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        errors += _sweep(self.hier, self.cgroup_dir, unified=False)
        if not errors:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return errors


# ====================================================================== LXC

def lxc_config(name: str, rootfs: str, cgroup_dir: str, log: Path, system: bool = False,
               monitor_dir: str | None = None) -> str:
    """An LXC container's config: busybox init on a shared root (system=False), or a systemd guest
    the way LXC's Debian containers are set up (common.conf, cgroup:mixed, SIGRTMIN+3 to halt).
    Its cgroups go below our own cgroup (lxc.cgroup.relative), in cgroup_dir."""
    lines = []
    if system and Path("/usr/share/lxc/config/common.conf").exists():
        lines.append("lxc.include = /usr/share/lxc/config/common.conf")  # what LXC's Debian containers get
    lines += [f"lxc.uts.name = {name}", f"lxc.rootfs.path = {rootfs}"]
    if system:
        lines += ["lxc.mount.auto =",  # replaces common.conf's, below
                  "lxc.mount.auto = proc:mixed sys:ro cgroup:mixed",
                  "lxc.autodev = 1",
                  "lxc.tty.max = 0"]  # only the console's getty, as in a ctd container (common.conf: 4 ttys)
    else:
        lines += ["lxc.mount.auto = proc:mixed sys:ro", "lxc.autodev = 1"]
    lines += ["lxc.net.0.type = empty", "lxc.apparmor.profile = unconfined", "lxc.init.cmd = /sbin/init"]
    if system:
        lines.append("lxc.signal.halt = SIGRTMIN+3")
    lines += [
        # Below our own cgroup, never escaping to the hierarchy root:
        "lxc.cgroup.relative = 1",
        f"lxc.cgroup.dir.container = {cgroup_dir}/{name}",
        f"lxc.cgroup.dir.monitor = {monitor_dir or f'{cgroup_dir}/{name}.monitor'}",
        f"lxc.log.file = {log}",
        "",
    ]
    return "\n".join(lines)


class Lxc:
    name = "lxc"

    def __init__(self, workdir: Path, tag: str, rootfs: Path, hier: list[Hierarchy]) -> None:
        self.path = workdir / "lxc"   # lxc -P
        self.rootfs = rootfs
        self.cgroup_dir = f"ctd-bench-{tag}-lxc"
        self.hier = hier
        self.created: set[str] = set()

    def _lxc(self, tool: str, name: str, *args: str, check: bool = True) -> float:
        t0 = time.perf_counter()
        r = subprocess.run([tool, "-P", str(self.path), "-n", name, *args], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True)
        ms = (time.perf_counter() - t0) * 1000
        if check and r.returncode != 0:
            log = self.path / name / "lxc.log"
            tail = log.read_text()[-1500:] if log.exists() else ""
            raise BenchError(f"{tool} {name}: {r.stderr.strip() or r.returncode}\n{tail}")
        return ms

    def create(self, name: str) -> None:
        """A container directory with its config (what `lxc-create -t none` would leave);
        the rootfs is the shared template root, never lxc-destroy'ed."""
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config").write_text(lxc_config(name, f"dir:{self.rootfs}", self.cgroup_dir, d / "lxc.log"))
        self.created.add(name)

    def start(self, name: str) -> float:
        return self._lxc("lxc-start", name, "-d")

    def exec(self, name: str, argv: list[str]) -> float:
        return self._lxc("lxc-attach", name, "--", *argv)

    def attach(self, name: str, argv: list[str], timeout: float = 120) -> tuple[int, str]:
        r = subprocess.run(["lxc-attach", "-P", str(self.path), "-n", name, "--clear-env",
                            "--set-var", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "--", *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout

    def stop(self, name: str) -> float:
        return self._lxc("lxc-stop", name, "-k")

    def destroy(self, name: str) -> None:
        shutil.rmtree(self.path / name, ignore_errors=True)
        self.created.discard(name)

    def init_pid(self, name: str) -> int | None:
        r = run_quiet(["lxc-info", "-P", str(self.path), "-n", name, "-pH"])
        return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else None

    def monitor_pids(self) -> list[int]:
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
                if cmd.startswith("[lxc monitor]") and f" {self.path} " in cmd + " ":
                    out.append(int(pid))
        return out

    def running(self) -> list[str]:
        r = run_quiet(["lxc-ls", "-P", str(self.path), "--running", "-1"])
        return r.stdout.split() if r.returncode == 0 else []

    def cleanup(self) -> list[str]:
        errors = []
        if self.path.exists():
            for name in self.running():
                with contextlib.suppress(Exception):
                    self._lxc("lxc-stop", name, "-k", check=False)
            left = self.running()
            if left:
                errors.append(f"LXC containers left: {left}")
        errors += _sweep(self.hier, self.cgroup_dir, unified=True)
        if not errors:
            shutil.rmtree(self.path, ignore_errors=True)
        return errors


def _sweep(hier: list[Hierarchy], cgroup_dir: str, unified: bool) -> list[str]:
    """Whatever an interrupted run left in our own cgroup directory: kill it (said on stderr),
    then remove the directories; returns what could not be removed."""
    errors = []
    for h in hier:
        if h.unified and not unified:
            continue
        path = os.path.join(h.own_dir, cgroup_dir)
        if h.key == "memory":
            killed = kill_cgroup_tree(path)
            if killed:
                print(f"cleanup: killed {len(killed)} leftover process(es) in {path}", file=sys.stderr)
        errors += [f"cgroup left: {p}" for p in remove_cgroup_tree(path)]
    return errors


# ====================================================================== LXC on btrfs (system containers)

class LoopBtrfs:
    """A btrfs filesystem of our own: a sparse image BASE/pool.img mounted at BASE/storage, made and
    released with ctd's own pool code (make_image, mount_image, release_pool)."""

    def __init__(self, base: Path, size: int = 40 << 30) -> None:
        self.base = base
        self.image = base / "pool.img"
        self.root = base / "storage"
        self.size = size
        self.device: str | None = None

    def create(self) -> None:
        from ctd.storage.pool import make_image, mount_image
        self.base.mkdir(parents=True, exist_ok=True)
        make_image(self.image, self.size)
        self.device = mount_image(self.image, self.root)

    def used(self) -> int:
        """Bytes used (statvfs, as ctd's GET /1.0/storage reports it), after a sync."""
        run_quiet(["btrfs", "filesystem", "sync", str(self.root)])
        st = os.statvfs(self.root)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def release(self) -> list[str]:
        if not self.image.exists():
            return []
        try:
            from ctd.storage.pool import release_pool
            release_pool(self.base)
        except Exception as exc:  # noqa: BLE001
            return [f"releasing the loop btrfs {self.image}: {exc}"]
        self.image.unlink(missing_ok=True)
        return []


class LxcSystem(Lxc):
    """LXC system containers with their own root on a btrfs filesystem of ours: a source container
    whose rootfs is a subvolume (`lxc.rootfs.path = btrfs:…`), cloned with `lxc-copy -s` (a btrfs
    snapshot), able to boot systemd (`lxc.init.cmd = /sbin/init`, LXC's common.conf, cgroup:mixed).
    Privileged, as LXC is by default as root."""

    def __init__(self, workdir: Path, tag: str, hier: list[Hierarchy], fs: LoopBtrfs) -> None:
        super().__init__(workdir, tag, Path("/nonexistent"), hier)
        self.fs = fs
        self.path = fs.root / "lxc"
        self.cgroup_dir = f"ctd-bench-{tag}-lxcsys"
        self.sources: dict[str, str] = {}  # template -> source container

    def write_config(self, name: str, rootfs: str) -> None:
        d = self.path / name
        (d / "config").write_text(lxc_config(name, rootfs, self.cgroup_dir, d / "lxc.log", system=True))

    def make_source(self, template: str, rootfs: Path) -> str:
        """A source container holding a copy of rootfs in a subvolume (untimed; once per template)."""
        if template in self.sources:
            return self.sources[template]
        name = f"src-{template}"
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        r = run_quiet(["btrfs", "subvolume", "create", str(d / "rootfs")])
        if r.returncode != 0:
            raise BenchError(f"btrfs subvolume create {d / 'rootfs'}: {r.stderr.strip()}")
        r = run_quiet(["cp", "-a", "--", f"{rootfs}/.", str(d / "rootfs")])
        if r.returncode != 0:
            raise BenchError(f"copying {rootfs} for LXC: {r.stderr.strip()}")
        self.write_config(name, f"btrfs:{d / 'rootfs'}")
        self.created.add(name)
        self.sources[template] = name
        return name

    def rootfs_of(self, name: str) -> Path:
        for line in (self.path / name / "config").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "lxc.rootfs.path":
                value = value.strip()
                return Path(value.split(":", 1)[1] if ":" in value else value)
        raise BenchError(f"LXC container {name} has no lxc.rootfs.path")

    def copy(self, src: str, name: str) -> float:
        """`lxc-copy -s` (a btrfs snapshot of the source's root); returns its wall time in ms."""
        self.created.add(name)
        return self._lxc("lxc-copy", src, "-s", "-N", name)

    def make_bootable(self, name: str, machine_id: bool = True) -> None:
        """After lxc-copy (untimed): our cgroup and log settings for this clone (lxc-copy keeps the
        source's), and a machine-id of its own, as ctd writes one at create (an empty one would
        make every boot a systemd "first boot")."""
        rootfs = self.rootfs_of(name)
        self.write_config(name, f"btrfs:{rootfs}")
        if machine_id:
            import uuid
            (rootfs / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")

    def destroy(self, name: str) -> None:
        """lxc-destroy: the container's own root (its snapshot) goes with it."""
        self._lxc("lxc-destroy", name, check=False)
        if (self.path / name).exists():
            raise BenchError(f"lxc-destroy {name} left {self.path / name}")
        self.created.discard(name)

    def destroy_timed(self, name: str) -> float:
        ms = self._lxc("lxc-destroy", name)
        self.created.discard(name)
        return ms

    def cleanup(self) -> list[str]:
        errors = []
        if self.path.exists():
            for name in self.running():
                with contextlib.suppress(Exception):
                    self._lxc("lxc-stop", name, "-k", check=False)
            left = self.running()
            if left:
                errors.append(f"LXC containers left: {left}")
        errors += _sweep(self.hier, self.cgroup_dir, unified=True)
        # The containers' roots live on our loop btrfs: releasing it (run.py) removes them all.
        return errors
