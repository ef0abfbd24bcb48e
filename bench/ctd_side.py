"""ctd for the benchmark: a private daemon (own state, socket, cgroup name, id range) and the
few API calls the benchmark times.

Teardown (CtdDaemon.teardown, and `with bench_daemon(...)`) leaves nothing behind however a run
ends (Ctrl-C, SIGTERM, SIGHUP, an exception, ctd itself killed): the instances are destroyed
through the API (a dead ctd is started again on the same state first: its recovery adopts what
still runs), then ctd stops, and whatever of ours is still on the host goes: the nftables
tables, bridges and interfaces named with our prefix, the ctd-bench-TAG cgroups (their
processes killed first), the storage pool. Signals are ignored while it runs, so a second
Ctrl-C cannot cut it short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import (
    BenchError,
    children,
    comm,
    hierarchies,
    kill_cgroup_tree,
    mounts_below,
    proc_rss,
    remove_cgroup_tree,
    run_quiet,
)

VENV_BIN = Path(sys.executable).parent


class CtdDaemon:
    def __init__(self, workdir: Path, tag: str, idmap_base: int = 3_600_000_000, storage: str | None = None) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "ctd-state"
        self.socket = workdir / "ctd.sock"
        self.config = workdir / "ctd.toml"
        self.log = workdir / "ctd.log"
        self.cgroup_name = f"ctd-bench-{tag}"
        self.idmap_base = idmap_base
        # Our own nftables table and NIC name prefix: never another ctd's rules or interfaces.
        self.nft_table = f"ctd_bench_{tag}"
        self.nic_prefix = _free_nic_prefix()
        self.storage = storage  # storage_driver setting; None: ctd's default
        self.extra_settings = ""  # more ctd.toml lines (e.g. https_address)
        self.info: dict = {}
        self.proc: subprocess.Popen | None = None
        self.created: set[str] = set()  # instances this run made (for cleanup)
        self.networks: set[str] = set()  # networks (bridges) this run made (for cleanup)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = None

    # ------------------------------------------------------------- daemon

    def start(self) -> None:
        ctd = VENV_BIN / "ctd"
        if not ctd.exists():
            raise BenchError(f"{ctd} is missing: run /work/main/setup.sh install")
        # An id area of its own (ctd refuses one that another live ctd's overlaps): above the
        # test suites' areas.
        settings = (f'cgroup_name = "{self.cgroup_name}"\nidmap_base = {self.idmap_base}\n'
                    f'idmap_end = {self.idmap_base + 600_000_000}\n'
                    f'nft_table = "{self.nft_table}"\nnic_prefix = "{self.nic_prefix}"\n')
        if self.storage:
            settings += f'storage_driver = "{self.storage}"\n'
        self.config.write_text(settings + self.extra_settings)
        log = self.log.open("a")   # a restart for the teardown keeps what the first run said
        # A session of its own: Ctrl-C in the terminal must not reach ctd (it would leave the
        # containers running and us without an API to clean them up).
        self.proc = subprocess.Popen(
            [str(ctd), "--state-dir", str(self.state_dir), "--socket", str(self.socket),
             "--config", str(self.config), "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        from ctctl.client import ApiError, Client
        self._client = Client(str(self.socket), timeout=120)
        deadline = time.monotonic() + 60  # a first start may make a btrfs pool image
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"ctd exited at start-up (status {self.proc.returncode}); see {self.log}:\n"
                                 + self.log.read_text()[-2000:])
            try:
                self.info = self._client.get("/1.0")
                break
            except ApiError:
                if time.monotonic() > deadline:
                    raise BenchError(f"ctd did not answer on {self.socket} within 60 s; see {self.log}") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawner_pid(self) -> int | None:
        for child in children(self.pid):
            if comm(child) == "ctd-spawner":
                return child
        kids = children(self.pid)
        return kids[0] if kids else None

    def rss(self) -> dict[str, int]:
        """VmRSS/RssAnon (kB) of the daemon and of its spawner."""
        d = proc_rss(self.pid)
        sp = self.spawner_pid()
        s = proc_rss(sp) if sp else {"VmRSS": 0, "RssAnon": 0}
        return {"daemon_VmRSS": d["VmRSS"], "daemon_RssAnon": d["RssAnon"],
                "spawner_VmRSS": s["VmRSS"], "spawner_RssAnon": s["RssAnon"]}

    def stop(self) -> None:
        """SIGTERM (after every container is gone), then wait; SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    # ------------------------------------------------------------- API

    @property
    def client(self):  # type: ignore[no-untyped-def]
        return self._client

    def build_template(self, name: str = "busybox", progress=None) -> Path:  # type: ignore[no-untyped-def]
        """Build a template from its recipe (progress: called with ctd's progress lines, and the
        client polls meanwhile instead of holding one request open for a long build)."""
        self.client.run("POST", "/1.0/templates", {"name": name}, progress=progress)
        rootfs = self.state_dir / "storage" / "templates" / name / "rootfs"
        if not (rootfs / "sbin" / "init").exists() and not (rootfs / "sbin" / "init").is_symlink():
            raise BenchError(f"template {name} built but {rootfs}/sbin/init is missing")
        return rootfs

    def create(self, name: str, privileged: bool = False, template: str = "busybox",
               nics: list[dict] | None = None) -> None:
        self.created.add(name)
        body: dict = {"name": name, "template": template}
        if privileged:
            body["privileged"] = True
        if nics:
            body["nics"] = nics
        self.client.run("POST", "/1.0/instances", body)

    def start_ct(self, name: str) -> None:
        self.client.run("PUT", f"/1.0/instances/{name}/state", {"action": "start"})

    def stop_ct(self, name: str) -> None:
        self.client.run("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})

    def destroy(self, name: str) -> None:
        self.client.run("DELETE", f"/1.0/instances/{name}", query={"force": "true"})
        self.created.discard(name)

    def init_pid(self, name: str) -> int | None:
        return self.client.get(f"/1.0/instances/{name}")["instance"].get("pid")

    def instance(self, name: str) -> dict:
        return self.client.get(f"/1.0/instances/{name}")["instance"]

    def storage_info(self) -> dict:
        return self.client.get("/1.0/storage")["storage"]

    def create_network(self, name: str, mtu: int | None = None) -> dict:
        """A bridge of our own (ctd picks a free private /24; the host takes its .1)."""
        self.networks.add(name)
        return self.client.request("POST", "/1.0/networks", {"name": name, **({"mtu": mtu} if mtu else {})})["network"]

    def delete_network(self, name: str) -> None:
        self.client.request("DELETE", f"/1.0/networks/{name}")
        self.networks.discard(name)

    def instance_names(self) -> list[str]:
        return [i["name"] for i in self.client.get("/1.0/instances")["instances"]]

    def exec(self, name: str, argv: list[str]) -> int:
        """Run a command through the exec WebSocket (what `ctctl exec` does, minus the CLI)."""
        return self.exec_output(name, argv)[0]

    def exec_output(self, name: str, argv: list[str]) -> tuple[int, str]:
        """exec, keeping what the command wrote on stdout."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        out: list[bytes] = []
        task = self._loop.create_task(self._exec(name, argv, out))
        try:
            code = self._loop.run_until_complete(task)
        except BaseException:  # Ctrl-C while waiting: close the WebSocket before going on
            task.cancel()
            with contextlib.suppress(BaseException):
                self._loop.run_until_complete(task)
            raise
        return code, b"".join(out).decode(errors="replace")

    async def _exec(self, name: str, argv: list[str], out: list[bytes] | None = None) -> int:
        import aiohttp
        code = None
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket))) as session:
            async with session.ws_connect(f"http://localhost/1.0/instances/{name}/exec",
                                          params=[("cmd", c) for c in argv]) as ws:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        control = json.loads(msg.data)
                        if control.get("type") == "exit":
                            code = int(control["code"])
                        elif control.get("type") == "error":
                            raise BenchError(f"exec in {name}: {control.get('error')}")
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        if out is not None and msg.data[:1] == b"\x01":  # channel 1: stdout
                            out.append(msg.data[1:])
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
        if code is None:
            raise BenchError(f"exec in {name}: no exit code came back")
        return code

    # ------------------------------------------------------------- cleanup

    def cleanup(self, every: bool = False) -> list[str]:
        """Destroy (forced) every instance this run created (every: all the ctd has, a scratch
        ctd's that a tool made through it too) and delete its networks; returns errors."""
        errors = []
        if self.proc is None or self.proc.poll() is not None:
            return [f"ctd is not running; instances left: {sorted(self.created)}"] if self.created else []
        try:
            names = set(self.instance_names())
        except Exception as exc:  # noqa: BLE001
            return [f"listing ctd instances failed: {exc}"]
        mine = names if every else names & self.created | {n for n in names if n.startswith("bench-")}
        for name in sorted(mine):
            try:
                self.destroy(name)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"destroy {name}: {exc}")
        for net in sorted(self.networks):
            try:
                self.delete_network(net)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"delete network {net}: {exc}")
        return errors

    def teardown(self, leftovers: bool = True) -> list[str]:
        """Everything this daemon made goes, whatever state the run stopped in (see the module's
        docstring); returns what stayed. leftovers=False: no sweep for bridges and tables of ours
        (a bench without networks)."""
        with signals_ignored():
            errors: list[str] = []
            if self.proc is not None and self.proc.poll() is not None and self.created:
                try:   # ctd died: a new one on the same state adopts the running ones, then destroys
                    self.start()
                except BenchError as exc:
                    errors.append(f"ctd could not be started again to destroy {sorted(self.created)}: {exc}")
            try:
                errors += self.cleanup()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"destroying the instances: {exc}")
            try:
                self.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"stopping ctd: {exc}")
            if leftovers:
                errors += self.network_leftovers()
            errors += self.cgroup_leftovers()
            errors += self.release_storage()
            left = mounts_below(str(self.workdir))
            if left:
                errors.append(f"still mounted: {', '.join(left)}")
            return errors

    def cgroup_leftovers(self) -> list[str]:
        """After ctd has stopped: our ctd-bench-TAG cgroup in every hierarchy, its processes
        killed first (containers of a ctd that could not destroy them); returns what stayed."""
        errors = []
        for h in hierarchies():
            path = os.path.join(h.own_dir, self.cgroup_name)
            if not os.path.isdir(path):
                continue
            killed = kill_cgroup_tree(path)
            if killed:
                errors.append(f"killed {len(killed)} processes left in {path}")
            errors += [f"cgroup left: {p}" for p in remove_cgroup_tree(path)]
        return errors

    def network_leftovers(self) -> list[str]:
        """After ctd has stopped: remove what of ours could still be on the host (a bridge of a
        network whose delete failed, our nftables table); returns what stayed."""
        errors = []
        for net in sorted(self.networks):
            if os.path.exists(f"/sys/class/net/{net}"):
                run_quiet(["ip", "link", "delete", net, "type", "bridge"])
            if os.path.exists(f"/sys/class/net/{net}"):
                errors.append(f"bridge {net} left on the host")
        for family in ("bridge", "inet"):
            if run_quiet(["nft", "list", "table", family, self.nft_table]).returncode == 0:
                r = run_quiet(["nft", "delete", "table", family, self.nft_table])
                if r.returncode != 0:
                    errors.append(f"nftables table {family} {self.nft_table} left: {r.stderr.strip()}")
        left = [n for n in os.listdir("/sys/class/net") if n.startswith(self.nic_prefix) and n[2:3].isdigit()]
        if left:
            errors.append(f"interfaces left: {', '.join(left)}")
        return errors

    def release_storage(self) -> list[str]:
        """ctd leaves its loop-backed btrfs pool mounted when it exits (on purpose, for restarts):
        unmount it and detach its loop device, with ctd's own release_pool."""
        if not (self.state_dir / "pool.img").exists():
            return []
        try:
            from ctd.storage.pool import release_pool
            release_pool(self.state_dir)
        except Exception as exc:  # noqa: BLE001
            return [f"releasing ctd's storage pool in {self.state_dir}: {exc}"]
        return []


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interruptible() -> None:
    """SIGINT, SIGTERM and SIGHUP end the run as KeyboardInterrupt: the `finally` that tears
    down runs (by default SIGTERM and SIGHUP would end the process on the spot)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """The teardown is not cut short by a second Ctrl-C or a SIGTERM."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for s in saved:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def bench_daemon(work: Path, tag: str, settings: str = "", **kwargs: object) -> Iterator[CtdDaemon]:
    """A started ctd for a bench part, torn down when the block ends, however it ends."""
    interruptible()
    d = CtdDaemon(work, tag, **kwargs)  # type: ignore[arg-type]
    d.extra_settings = settings
    try:
        for base in ID_AREAS:   # the first id area no other ctd on this shared host holds
            d.idmap_base = base
            try:
                d.start()
                break
            except BenchError as exc:
                if "owns host ids" not in str(exc) or base == ID_AREAS[-1]:
                    raise
        yield d
    finally:
        errors = d.teardown()
        for e in errors:
            print(f"teardown: {e}", file=sys.stderr)
        if not errors:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"teardown: scratch directory kept: {work}", file=sys.stderr)


ID_AREAS = (1_300_000_000, 2_200_000_000, 2_900_000_000, 3_650_000_000)


def scratch_daemon(work: Path, prefix: str, extra: str = "") -> CtdDaemon:
    """A started scratch ctd without a default network, in an id area no other ctd on this
    (shared) host holds; extra: more ctd.toml lines."""
    import uuid
    for base in ID_AREAS:
        d = CtdDaemon(work, f"{prefix}{uuid.uuid4().hex[:4]}", idmap_base=base)
        d.extra_settings = 'default_network = ""\n' + extra
        try:
            d.start()
            return d
        except BenchError as exc:
            if "owns host ids" not in str(exc):
                raise
    raise BenchError("every id area this bench tries is held by another ctd")


def _free_nic_prefix() -> str:
    """Two letters no host interface name starts with (ctd names host ends <prefix><id>.<n>)."""
    names = os.listdir("/sys/class/net")
    letters = "bcdfghjkmnpqrstwxz"
    while True:
        prefix = random.choice(letters) + random.choice(letters)
        if not any(n.startswith(prefix) for n in names):
            return prefix


@contextlib.contextmanager
def scratch_run(prefix: str, workdir: str, tag: str) -> Iterator[tuple[CtdDaemon, Path]]:
    """A scratch directory below workdir and a started scratch ctd in it (scratch_daemon) for one
    bench's main(); at the end, whatever happened: every instance and network of that ctd goes
    (each failure printed, the rest goes on), ctd stops, its pool is released, the directory goes."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    try:
        d = scratch_daemon(work, tag)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        yield d, work
    finally:
        errors = d.cleanup(every=True)
        d.stop()
        for error in errors + d.release_storage():
            print(error, file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


def blank_vm(d: CtdDaemon, name: str, disk_mib: int, data_mib: int) -> None:
    """A VM without an OS (its firmware idles: QEMU and its block layer are what a bench times)
    with data_mib MiB of random bytes at the start of its disk_mib MiB disk, written on the host
    before it first runs; started."""
    d.client.run("POST", "/1.0/instances", {"name": name, "type": "vm", "vm": {"disk": f"{disk_mib}M"},
                                            "limits": {"ram": "256M"}})
    d.created.add(name)
    with open(d.state_dir / f"storage/instances/{name}/disk.raw", "r+b") as fh:
        for _ in range(data_mib):
            fh.write(os.urandom(1 << 20))
    d.start_ct(name)


def finish(output: str | Path, results: dict, errors: list[str], work: Path, label: str = "error") -> int:
    """The end of a bench that keeps its results: JSON to output, errors on stderr; the scratch
    directory removed only when all went well (else kept, with ctd's log, to look at).
    Returns the exit code."""
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(results, indent=2) + "\n")
    for error in errors:
        print(f"{label}: {error}", file=sys.stderr)
    if not errors:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


@contextlib.contextmanager
def https_daemon(prefix: str, port: int, settings: str = "") -> Iterator[tuple[CtdDaemon, list[str]]]:
    """A started ctd (dir storage, busybox template built) with its HTTPS listener on 127.0.0.1:port,
    in a temporary directory; torn down at the end, the teardown's errors added to the list given."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/var/tmp") as tmp:
        import secrets
        ctd = CtdDaemon(Path(tmp), secrets.token_hex(4), storage="dir")
        ctd.extra_settings = f'https_address = "127.0.0.1:{port}"\n' + settings
        ctd.start()
        errors: list[str] = []
        try:
            ctd.build_template()
            yield ctd, errors
        finally:
            errors += ctd.teardown(leftovers=False)
