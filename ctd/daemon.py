"""ctd start-up: config, spawner, state, drivers, recovery, API server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import platform
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ctd import __version__
from ctd.config import DaemonConfig, load_config
from ctd.errors import CtdError
from ctd.ownership import Ownership, daemon_claims

if TYPE_CHECKING:  # imported lazily at run time (ctd --help and refusals stay fast)
    import ssl
    from typing import Any

    from aiohttp import web

    from cgroups import CgroupManager
    from ctd.cluster.node import ClusterNode
    from ctd.events.bus import EventBus
    from ctd.instance.container.driver import ContainerDriver
    from ctd.instance.container.spawner_client import SpawnerClient
    from ctd.instance.manager import InstanceManager
    from ctd.lxcfs import Lxcfs
    from ctd.network.manager import NetworkManager
    from ctd.remote.api import RemoteAccess
    from ctd.remote.tls import ListenAddress
    from ctd.state import StateDB
    from ctd.storage.base import StorageDriver
    from ctd.template.manager import TemplateManager

    # https_address's listener: where, its TLS context, and what GET /1.0 shows of it
    HttpsListener = tuple[ListenAddress, ssl.SSLContext, dict[str, Any]]

log = logging.getLogger("ctd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ctd", description="ctd: system containers and VMs (runs in the foreground)")
    p.add_argument("--config", type=Path, help="settings file (default /etc/ctd/ctd.toml)")
    p.add_argument("--state-dir", type=Path, help="state, storage and runtime files (default /var/lib/ctd)")
    p.add_argument("--socket", type=Path, help="API socket (default /run/ctd/ctd.sock)")
    p.add_argument("--log-level", default=os.environ.get("CTD_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"ctd {__version__}")
    return p.parse_args(argv)


def sd_notify(message: str) -> None:
    """Tell systemd we are ready (Type=notify); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)


def take_lock(config: DaemonConfig) -> int:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state_dir, 0o711)
    fd = os.open(config.state_dir / "ctd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CtdError(f"another ctd (pid {owner}) runs on state dir {config.state_dir}; stop it first, "
                       "or use another --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def claim_resources(config: DaemonConfig) -> Ownership:
    """Own the host-wide resources this ctd's settings name, or refuse to run: another ctd on
    the same cgroup base, nftables table, NIC prefix or id area would end or rewrite what the
    first one runs (its recovery stopped every container of the other)."""
    from cgroups import CgroupError, detect_manager

    try:
        cgroup_dirs = detect_manager(base_name=config.cgroup_name).base_dirs()
    except CgroupError as exc:
        raise CtdError(f"cgroups: {exc}") from None
    ownership = Ownership(config.state_dir)
    ownership.claim(daemon_claims(config.state_dir, config.socket, cgroup_dirs, config.cgroup_name,
                                  config.nft_table, config.nic_prefix,
                                  # the user-namespace owner block below idmap_base is ctd's too
                                  config.owner_base or config.idmap_base, config.idmap_limit))
    return ownership


def open_storage(config: DaemonConfig) -> StorageDriver:
    """The storage driver the settings and the host allow (mounting ctd's pool if it has one)."""
    from cgroups import parse_size
    from ctd.storage.btrfs.quota import QuotaMode
    from ctd.storage.dir import DirStorage
    from ctd.storage.pool import choose_storage

    if config.storage_driver not in ("auto", "dir", "btrfs"):
        raise CtdError(f"storage_driver must be auto, dir or btrfs, not {config.storage_driver!r}")
    if config.storage_driver == "dir":
        return DirStorage(config.storage_dir)
    try:
        size = parse_size(config.pool_size) if config.pool_size else None
    except ValueError as exc:
        raise CtdError(f"pool_size: {exc}") from None
    storage = choose_storage(config.state_dir, pool_size=size, quota_mode=QuotaMode(config.quota_mode))
    if config.storage_driver == "btrfs" and storage.name != "btrfs":
        raise CtdError(f"storage_driver is btrfs but btrfs cannot be used: {storage.reason}")
    log.info("storage: %s at %s (%s)", storage.name, storage.root, storage.reason or "configured")
    return storage


def protect_host(cgroups: CgroupManager, config: DaemonConfig) -> None:
    """Cap all containers together (pids and memory) on ctd's base cgroup: a container without
    limits of its own still cannot take the host's last pid or page."""
    from cgroups import CgroupError, parse_size

    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    threads_max = int(open("/proc/sys/kernel/threads-max").read())
    pids = config.max_total_pids or min(pid_max, threads_max) * 2 // 5
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    memory = parse_size(config.max_total_memory) if config.max_total_memory else ram * 9 // 10
    try:
        cgroups.protect_host(pids, memory)
        log.info("all containers together: at most %d processes and %d MiB", pids, memory >> 20)
    except (CgroupError, OSError) as exc:
        log.warning("could not cap containers' total pids/memory on the base cgroup: %s", exc)


def warn_owner_clash(config: DaemonConfig) -> None:
    """The uids that own containers' user namespaces must be nobody's on the host: a process
    running as one would hold every capability in that container's user namespace."""
    from ctd import idmap

    low, high = config.owner_base, config.owner_base + 65536
    if not low:
        log.warning("idmap_base %d leaves no room below it for user-namespace owners: root owns every "
                    "container's user namespace (they share root's inotify and other per-user limits)",
                    config.idmap_base)
        return
    clash = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit() and low <= int(fields[2]) < high:
                clash.append(f"user {fields[0]} ({fields[2]})")
    for start, count in idmap.subid_ranges(Path("/etc/subuid"), Path("/etc/subgid")):
        if start < high and low < start + count:
            clash.append(f"subordinate ids {start}-{start + count - 1}")
    if clash:
        log.warning("uids %d-%d own containers' user namespaces and must be nobody else's, but %s use "
                    "some: move them, or move idmap_base", low, high - 1, ", ".join(clash))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        print("ctd: must run as root (it creates namespaces, cgroups and mounts)", file=sys.stderr)
        return 1
    try:
        config = load_config(args.config, {"state_dir": args.state_dir, "socket": args.socket})
    except CtdError as exc:
        print(f"ctd: {exc.message}", file=sys.stderr)
        return 1
    # The spawner must be forked before anything starts a thread, and before the lock is
    # taken (a forked child would hold the lock too).
    from ctd.instance.container.spawner_client import SpawnerClient
    warn_owner_clash(config)
    spawner = SpawnerClient.fork(str(config.state_dir), config.owner_base)
    try:
        lock_fd = take_lock(config)
    except CtdError as exc:
        print(f"ctd: {exc.message}", file=sys.stderr)
        spawner.close()
        return 1
    try:
        ownership = claim_resources(config)
    except CtdError as exc:
        print(f"ctd: {exc.message}", file=sys.stderr)
        spawner.close()
        os.close(lock_fd)
        return 1
    try:
        return asyncio.run(serve(config, spawner))
    except CtdError as exc:
        print(f"ctd: {exc.message}", file=sys.stderr)
        return 1
    finally:
        spawner.close()
        ownership.release()
        os.close(lock_fd)


async def serve(config: DaemonConfig, spawner: SpawnerClient) -> int:
    from cgroups import detect_manager, parse_size
    from ctd.instance.container.driver import ContainerDriver
    from ctd.lxcfs import LXCFS_GROUP, Lxcfs
    from ctd.network.manager import NetworkManager
    from ctd.state import StateDB
    from ctd.template.manager import TemplateManager

    loop = asyncio.get_running_loop()
    spawner.attach(loop)
    https = https_listener(config)  # a bad certificate stops ctd before it touches anything
    metrics_socket = bind_metrics(config)  # so does a metrics port that is taken
    db = StateDB(config.db_path)
    storage = await asyncio.to_thread(open_storage, config)
    storage.prepare()
    cgroups = detect_manager(base_name=config.cgroup_name)
    protect_host(cgroups, config)
    templates = TemplateManager(config.templates_dir, db, storage)
    lxcfs = Lxcfs(config.state_dir / "lxcfs" / "mnt", cgroups.group(LXCFS_GROUP),
                  parse_size(config.lxcfs_memory) if config.lxcfs_memory else None)
    if not await asyncio.to_thread(lxcfs.ensure):
        log.warning("%s", lxcfs.reason)
    containers = ContainerDriver(spawner, cgroups, lxcfs)
    network = NetworkManager(db, config.nft_table, config.nic_prefix, config.default_network, config.run_dir)
    host = Host(spawner, db, storage, cgroups, templates, lxcfs, containers, network)
    try:
        return await run(config, host, https, metrics_socket)
    finally:  # a stop, or a start that failed half-way (a port taken, recovery raised): the same undo
        for runner in reversed(host.runners):
            await runner.cleanup()
        containers.unwatch_lxcfs()  # its end at shutdown is no death to recover from
        spawner.close()  # its standbys end with it, so their groups can go
        await containers.drop_staged()
        if not containers.running:  # nothing uses them any more
            lxcfs.stop()  # first: its cgroup is below the base
            with contextlib.suppress(Exception):
                cgroups.remove_base()
            network.remove_filters()
        try:
            config.socket.unlink()
        except FileNotFoundError:
            pass
        db.close()


@dataclass
class Host:
    """What serve() set up on the host, for run() to use and serve() to take down."""
    spawner: SpawnerClient
    db: StateDB
    storage: StorageDriver
    cgroups: CgroupManager
    templates: TemplateManager
    lxcfs: Lxcfs
    containers: ContainerDriver
    network: NetworkManager
    runners: list[web.AppRunner] = field(default_factory=list)  # the API's: serve cleans them up


async def run(config: DaemonConfig, host: Host, https: HttpsListener | None,
              metrics_socket: socket.socket | None) -> int:
    """Recover, serve the API until SIGTERM/SIGINT, then stop instances if configured to."""
    from aiohttp import web

    from ctd.api.context import ApiContext
    from ctd.api.server import make_app, prepare_socket_path, secure_socket
    from ctd.events.bus import EventBus
    from ctd.events.limits import LimitWatcher
    from ctd.events.logs import EventLogHandler
    from ctd.events.model import project_of
    from ctd.instance.autostart import Autostart
    from ctd.instance.backup_scheduler import BackupScheduler
    from ctd.instance.manager import InstanceManager
    from ctd.instance.transfer import Transfers
    from ctd.operations import Operations

    db, storage, cgroups, lxcfs, containers, network = (host.db, host.storage, host.cgroups, host.lxcfs,
                                                        host.containers, host.network)
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(network.restore)
    def resolve(name: str) -> str | None:   # an event's instance name -> its project
        rec = db.get_instance(name) if not name.isdigit() else None
        return project_of(rec) if rec is not None and rec.name == name else None

    events = EventBus(config.events_queue, resolve)
    events.bind(loop)
    instances = InstanceManager(config, db, storage, host.templates, containers, cgroups, network, events)
    vm_driver = instances.probe_vms()   # probed again when a VM create or `ctctl check` needs it
    report = await instances.recover()
    await containers.announce_owners()  # before them, the spawner makes no standby
    containers.watch_lxcfs()
    containers.staging = True  # after recovery, which removes groups of no running container
    info = {
        "version": __version__, "api": "1.0", "pid": os.getpid(), "kernel": platform.release(),
        "storage": {"driver": storage.name, "path": str(storage.root), "reason": storage.reason},
        "cgroup_version": cgroups.version,
        "cgroup_controllers": sorted(cgroups.controllers), "state_dir": str(config.state_dir),
        "drivers": {"container": {"usable": True}, "vm": vm_driver,
                    "lxcfs": {"usable": lxcfs.available, "reason": lxcfs.reason,
                              "fix": "apt-get install lxcfs, then restart ctd"}},
        "recovered": report,
    }
    autostart = Autostart(instances)
    boot_id = autostart.plan()   # after recovery: what kept running is adopted, not started again
    info["boot"] = autostart.status   # live: the boot sequence updates it
    operations = Operations(events)
    transfers = Transfers(instances)
    context = ApiContext(config, db, instances, host.templates, operations, network, transfers, info,
                         autostart=autostart, events=events)
    log_events = EventLogHandler(events)
    logging.getLogger("ctd").addHandler(log_events)
    limit_watch = loop.create_task(LimitWatcher(events, instances).run())
    dhcp_watch = loop.create_task(dhcp_ticks(network))
    scheduler = BackupScheduler(instances.backups, transfers, operations, config.backup_tick)
    report["removed_dirs"].extend(await asyncio.to_thread(
        instances.backups.discard_partial, {r.id: r.name for r in db.list_instances()}))
    access = remote_access(config, db, https[2]["certificate_fingerprint"] if https else None)
    info["https"] = https[2] if https else None
    cluster = await cluster_node(config, instances, events, storage, https[2] if https else None)
    context.cluster = cluster
    replication = None
    if cluster is not None:
        access.peers = cluster.peer_by_fingerprint
        from ctd.cluster.ha import ClusterServices
        replication = ClusterServices(context)   # replication, HA failover and fencing (ha.py)
        await replication.start()   # before the boot sequence: a failed-over copy is never started
    app = make_app(context, access)
    from ctd.api import clienterrors
    clienterrors.install()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host.runners.append(runner)
    prepare_socket_path(config.socket, config.socket_group)
    site = web.UnixSite(runner, str(config.socket), backlog=1024)  # 128 refuses 200 clients at once
    await site.start()
    secure_socket(config.socket, config.socket_group)
    if https:
        address, ssl_context, public = https
        try:
            from ctd.remote.site import HttpsSite
            await HttpsSite(runner, address, ssl_context).start()
        except OSError as exc:
            raise CtdError(f"cannot listen on https_address {address}: {exc.strerror}") from None
        log.info("HTTPS API on %s, certificate SHA-256 %s", address, public["certificate_fingerprint"])
    metrics_runner = await metrics_listener(metrics_socket, app)
    if metrics_runner:
        host.runners.append(metrics_runner)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ctd %s listening on %s (state in %s, cgroup v%d)", __version__, config.socket,
             config.state_dir, cgroups.version)
    sd_notify("READY=1")
    if boot_id is not None:   # in the background: the API answers while instances start
        boot_op = operations.new("boot", boot_id)
        operations.start("boot", boot_id, autostart.run(boot_id, boot_op), boot_op)
    scheduler.start()
    await stop.wait()
    if replication is not None:
        await replication.stop()
    if cluster is not None:
        await cluster.stop()
    scheduler.stop()
    autostart.halt()
    if config.stop_instances_on_exit:   # the operator's choice for a host going down
        log.info("shutting down; stopping every instance first (stop_instances_on_exit)")
        await autostart.shutdown_all(None)   # each with its own stop timeout
    else:   # containers keep running; a new ctd adopts them
        log.info("shutting down; running containers stay up")
    sd_notify("STOPPING=1")
    limit_watch.cancel()
    dhcp_watch.cancel()
    await asyncio.to_thread(network.dhcp.stop_all)   # started again, with the networks, by the next ctd
    logging.getLogger("ctd").removeHandler(log_events)
    access.audit.close()
    return 0


async def cluster_node(config: DaemonConfig, instances: InstanceManager, events: EventBus,
                       storage: StorageDriver, https: dict[str, Any] | None) -> ClusterNode | None:
    """Cluster mode (etcd_endpoints set): this node's membership task, started; None otherwise,
    and then nothing of ctd.cluster.node or the etcd client is loaded."""
    if not config.etcd_endpoints:
        return None
    from ctd.cluster.etcd import Etcd
    from ctd.cluster.membership import NodeSettings
    from ctd.cluster.node import ClusterNode

    address = config.node_address
    if not address and https:
        host, _, port = str(https["address"]).rpartition(":")
        host = host.strip("[]")
        if host in ("", "::", "0.0.0.0"):
            host = socket.gethostname()
        address = f"https://{f'[{host}]' if ':' in host else host}:{port}"
    cert = None
    if https:   # its HTTPS certificate is its client certificate towards the other nodes
        from ctd.remote.tls import server_certificate
        own = server_certificate(config.tls_dir, config.https_cert, config.https_key)
        cert = (own.cert_path, own.key_path)
    settings = NodeSettings(config.cluster_node, address, https["certificate_fingerprint"] if https else "",
                            config.cluster_lease_ttl, __version__, storage.root, cert, config.idmap_size)
    node = ClusterNode(Etcd(config.etcd_endpoints), settings, instances.summaries)
    instances.reservations.foreign_ids = node.foreign_ids
    instances.reservations.foreign_ranges = node.foreign_ranges
    node.attach(instances.network)   # MACs and addresses cluster-wide
    events.tap(lambda event: node.poke() if event.type.value == "lifecycle" else None)
    node.start()
    log.info("cluster mode: node %s, etcd at %s", settings.name, ", ".join(config.etcd_endpoints))
    return node


async def dhcp_ticks(network: NetworkManager, every: float = 2.0) -> None:
    """Keep every network's dnsmasq running and its hosts files current (ctd/network/dhcp.py)."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(network.dhcp.tick)
        except Exception:  # noqa: BLE001 — the next tick tries again
            log.exception("looking after the networks' dnsmasq failed")


def remote_access(config: DaemonConfig, db: StateDB, server_fingerprint: str | None) -> RemoteAccess:
    from ctd.config import audit_rotation
    from ctd.remote.api import RemoteAccess
    from ctd.remote.audit import AuditLog
    from ctd.remote.tokens import TokenStore
    from ctd.remote.trust import TrustStore
    # The DB holds the tokens' hashes: nobody but root reads it (SQLite gives -wal/-shm its mode).
    os.chmod(config.db_path, 0o600)
    max_size, keep = audit_rotation(config, config.audit_log)
    return RemoteAccess(TokenStore(db.conn), AuditLog(config.audit_log, max_size, keep), trust=TrustStore(db.conn),
                        server_fingerprint=server_fingerprint)


def bind_metrics(config: DaemonConfig) -> socket.socket | None:
    """The loopback metrics socket, bound now (before ctd touches anything); None when off."""
    if not config.metrics_address:
        return None
    from ctd.metrics import parse_metrics_address
    address = parse_metrics_address(config.metrics_address)
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        return socket.create_server((address.host, address.port), family=family, backlog=128)
    except OSError as exc:
        raise CtdError(f"cannot listen on metrics_address {address}: {exc.strerror}") from None


async def metrics_listener(sock: socket.socket | None, app: web.Application) -> web.AppRunner | None:
    """Serve GET /metrics on the bound loopback socket; its runner, or None when off."""
    if sock is None:
        return None
    from aiohttp import web

    from ctd.api.metrics import METRICS, loopback_app
    metrics_runner = web.AppRunner(loopback_app(app[METRICS]), access_log=None, handle_signals=False)
    await metrics_runner.setup()
    await web.SockSite(metrics_runner, sock).start()
    log.info("Prometheus metrics on http://%s/metrics (loopback, no authentication)", _socket_address(sock))
    return metrics_runner


def _socket_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def https_listener(config: DaemonConfig) -> HttpsListener | None:
    """(address, SSL context, what GET /1.0 shows) when https_address is set; None when it is off."""
    if not config.https_address:
        return None
    from ctd.remote.tls import parse_listen_address, server_certificate
    address = parse_listen_address(config.https_address)
    cert = server_certificate(config.tls_dir, config.https_cert, config.https_key)
    public = {"address": str(address), "certificate_fingerprint": cert.fingerprint,
              "self_signed": cert.self_signed}
    return address, cert.ssl_context(), public


if __name__ == "__main__":
    sys.exit(main())
