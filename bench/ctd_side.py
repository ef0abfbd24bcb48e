"""ctd for the benchmark: a private daemon (own state, socket, cgroup name, id range) and the
few API calls the benchmark times."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import BenchError, children, comm, proc_rss, run_quiet

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
        log = self.log.open("w")
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

    def cleanup(self) -> list[str]:
        """Destroy (forced) every instance this run created; returns errors."""
        errors = []
        if self.proc is None or self.proc.poll() is not None:
            return [f"ctd is not running; instances left: {sorted(self.created)}"] if self.created else []
        try:
            names = set(self.instance_names())
        except Exception as exc:  # noqa: BLE001
            return [f"listing ctd instances failed: {exc}"]
        for name in sorted(names & self.created | {n for n in names if n.startswith("bench-")}):
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


def _free_nic_prefix() -> str:
    """Two letters no host interface name starts with (ctd names host ends <prefix><id>.<n>)."""
    names = os.listdir("/sys/class/net")
    letters = "bcdfghjkmnpqrstwxz"
    while True:
        prefix = random.choice(letters) + random.choice(letters)
        if not any(n.startswith(prefix) for n in names):
            return prefix
