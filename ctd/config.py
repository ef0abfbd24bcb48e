"""Daemon settings: embedded defaults, overridden by /etc/ctd/ctd.toml, overridden by flags."""

from __future__ import annotations

import dataclasses
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ctd.errors import InvalidRequest

DEFAULT_CONFIG_FILE = Path("/etc/ctd/ctd.toml")
DEFAULT_IDMAP_RANGES = 8192
MAX_ID = 2**32 - 1  # (uid_t)-1 is no id
QUOTA_MODES = ("full", "simple")  # the values of ctd.storage.btrfs.quota.QuotaMode


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/ctd")
    socket: Path = Path("/run/ctd/ctd.sock")
    socket_group: str = "ctd"
    # First host id handed to containers; each container takes 65536 ids from here up,
    # skipping ranges that /etc/subuid or /etc/subgid give to host users.
    idmap_base: int = 1_000_000
    idmap_size: int = 65536
    # First id above ctd's area (exclusive): two ctds on one host need areas that do not
    # overlap (a second ctd on an overlapping area is refused). 0: room for 8192 containers.
    idmap_end: int = 0
    # cgroup directory ctd creates below its own cgroup in every hierarchy.
    cgroup_name: str = "ctd"
    # nftables table (bridge and inet families) holding the anti-spoofing rules.
    nft_table: str = "ctd"
    # Host ends of NICs are named <prefix><id>.<n>; two letters.
    nic_prefix: str = "ve"
    stop_timeout: float = 30.0
    # The network a new instance gets a NIC on when create names none (made on first use,
    # without NAT); "" gives such instances no NIC.
    default_network: str = "ctbr0"
    # Memory lxcfs may take (its own cgroup; tenants' open handles on its files cost ~2 kB
    # each); "" for no limit of its own.
    lxcfs_memory: str = "128M"
    # What all containers together may take, so the host always keeps a reserve: processes
    # (0 = 40% of the host's pid/thread limit) and memory ("" = 90% of the RAM).
    max_total_pids: int = 0
    max_total_memory: str = ""
    # "auto": btrfs where the state dir is on btrfs, else a loop-backed btrfs pool image when
    # btrfs-progs is installed, else plain directories. "dir" forces directories.
    storage_driver: str = "auto"
    # Size of a new pool image, e.g. "50G"; empty: 20% of the free space, at most 100G.
    pool_size: str = ""
    # btrfs quota accounting on a NEW pool: "full" qgroups (the default) or "simple" quotas
    # (Linux >= 6.7; creates stay flat at 1000 instances, but a tenant who may roll back or
    # restore can exceed their --diskspace: docs/storage.md, "Simple quotas"). A pool whose
    # quota is on keeps its mode.
    quota_mode: str = "full"
    templates_dir: Path = Path(__file__).resolve().parent.parent / "templates"
    # The remote API: off unless set, e.g. "[::]:8443" (every address) or "127.0.0.1:8443".
    https_address: str = ""
    # The operator's certificate and key (PEM); unset: a self-signed one made in STATE/tls.
    https_cert: Path | None = None
    https_key: Path | None = None
    # The audit log (STATE/audit.log) starts a new file past this size, keeping this many old ones
    # (audit.log.1 is the newest); 'ctctl audit' reads across them.
    audit_max_size: str = "10M"
    audit_keep: int = 5
    # Plain-HTTP GET /metrics for a local Prometheus, off unless set, e.g. "127.0.0.1:9420".
    # Loopback only: it has no authentication and names every instance.
    metrics_address: str = ""
    # Autostart after a host boot: how many instances of one boot-order group start at once,
    # and where the kernel's boot id is read (tests point it at a file of their own to present
    # a new boot; a host never changes it).
    boot_concurrency: int = 4
    boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id")
    # Stop every instance (reverse boot order, as `ctctl shutdown-all`) when ctd itself stops on
    # SIGTERM. Off: stopping ctd leaves them running, so it can be upgraded under them.
    stop_instances_on_exit: bool = False
    # Scheduled backups (ctd/instance/backups.py): where they go (unset: STATE/backups), a new
    # full backup every this many (at most; fewer when backup_keep is smaller), how often the
    # scheduler looks for due ones (seconds), and a file holding the scheduler's "now" in epoch
    # seconds (tests only: they present a time of their own; unset or unreadable: the clock).
    backup_dir: Path | None = None
    backup_full_every: int = 7
    backup_tick: float = 30.0
    backup_clock_file: Path | None = None
    # GET /1.0/events: how many events may wait unread for one client before it is cut off as
    # too slow (each client has its own queue; docs/api.md, "Events").
    events_queue: int = 1024
    # Cluster mode (docs/cluster.md): the client URLs of the etcd cluster, e.g.
    # ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]. Empty: a standalone
    # ctd that never imports or touches etcd. The node's name in the cluster ("": the hostname),
    # the HTTPS URL its peers reach it on ("": https://HOSTNAME:PORT of https_address), and the
    # TTL of its etcd lease: a node whose ctd has not renewed it for this long is offline.
    etcd_endpoints: tuple[str, ...] = ()
    node_name: str = ""
    node_address: str = ""
    cluster_lease_ttl: int = 10

    @property
    def cluster_node(self) -> str:
        return self.node_name or socket.gethostname().split(".")[0].lower()

    @property
    def idmap_limit(self) -> int:
        """The end of ctd's id area (exclusive)."""
        return self.idmap_end or self.idmap_base + DEFAULT_IDMAP_RANGES * self.idmap_size

    @property
    def owner_base(self) -> int:
        """The 65536 host uids below idmap_base own the containers' user namespaces (one each,
        so the kernel's per-user limits are per container); reserved: no host user may have
        one. 0 (root owns them all, as before) where that block would reach below 65536."""
        base = self.idmap_base - 65536
        return base if base >= 65536 else 0

    @property
    def backups_dir(self) -> Path:
        return self.backup_dir or self.state_dir / "backups"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "ctd.db"

    @property
    def storage_dir(self) -> Path:
        return self.state_dir / "storage"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.log"


def load_config(path: Path | None, overrides: dict[str, object]) -> DaemonConfig:
    """Embedded defaults < the TOML file (if it exists) < command-line overrides."""
    values: dict[str, object] = {}
    file = path or DEFAULT_CONFIG_FILE
    if file.exists():
        with file.open("rb") as fh:
            try:
                values.update(tomllib.load(fh))
            except tomllib.TOMLDecodeError as exc:
                raise InvalidRequest(f"{file}: not valid TOML: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f for f in dataclasses.fields(DaemonConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidRequest(f"{file}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    typed: dict[str, object] = {}
    for name, value in values.items():
        kind = known[name].type
        typed[name] = Path(str(value)) if kind in ("Path", "Path | None") else value
        if name == "etcd_endpoints" and isinstance(value, list):
            typed[name] = tuple(value)
    config = DaemonConfig(**typed)  # type: ignore[arg-type]
    check_config(config, file)
    if config.https_address:
        from ctd.remote.tls import parse_listen_address
        if not isinstance(config.https_address, str):
            raise InvalidRequest(f"{file}: https_address must be a string such as \"[::]:8443\"")
        parse_listen_address(config.https_address)
    audit_rotation(config, file)
    if config.metrics_address:
        from ctd.metrics import parse_metrics_address
        try:
            parse_metrics_address(config.metrics_address)
        except InvalidRequest as exc:
            raise InvalidRequest(f"{file}: {exc.message}") from None
    return config


def check_config(config: DaemonConfig, file: Path) -> None:
    """What names host-wide resources must be well-formed: they key ctd's ownership locks."""
    for name in ("idmap_base", "idmap_size", "idmap_end"):
        if not isinstance(getattr(config, name), int) or isinstance(getattr(config, name), bool):
            raise InvalidRequest(f"{file}: {name} must be a whole number")
    if config.idmap_size < 65536 or config.idmap_base < 65536:
        raise InvalidRequest(f"{file}: idmap_base and idmap_size must be at least 65536 (below are host ids)")
    if not config.idmap_base + config.idmap_size <= config.idmap_limit <= MAX_ID:
        raise InvalidRequest(f"{file}: idmap_end must be above idmap_base + idmap_size and at most {MAX_ID} "
                             "(or 0 for the default)")
    if not isinstance(config.nft_table, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", config.nft_table):
        raise InvalidRequest(f"{file}: nft_table must be a letter then letters, digits or _ (at most 64)")
    if not isinstance(config.nic_prefix, str) or not re.fullmatch(r"[a-z]{2}", config.nic_prefix):
        raise InvalidRequest(f"{file}: nic_prefix must be two lowercase letters, not {config.nic_prefix!r}")
    if not isinstance(config.stop_instances_on_exit, bool):
        raise InvalidRequest(f"{file}: stop_instances_on_exit must be true or false")
    concurrency = config.boot_concurrency
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 256:
        raise InvalidRequest(f"{file}: boot_concurrency must be a whole number from 1 to 256, not {concurrency!r}")
    every, tick = config.backup_full_every, config.backup_tick
    if not isinstance(every, int) or isinstance(every, bool) or not 1 <= every <= 1000:
        raise InvalidRequest(f"{file}: backup_full_every must be a whole number from 1 to 1000, not {every!r}")
    if not isinstance(tick, (int, float)) or isinstance(tick, bool) or not 0.1 <= tick <= 3600:
        raise InvalidRequest(f"{file}: backup_tick must be seconds from 0.1 to 3600, not {tick!r}")
    if config.quota_mode not in QUOTA_MODES:
        raise InvalidRequest(f"{file}: quota_mode must be \"full\" (the default) or \"simple\" (btrfs simple "
                             f"quotas, docs/storage.md), not {config.quota_mode!r}")
    check_cluster(config, file)
    queue = config.events_queue
    if not isinstance(queue, int) or isinstance(queue, bool) or not 1 <= queue <= 1_000_000:
        raise InvalidRequest(f"{file}: events_queue must be a whole number from 1 to 1000000, not {queue!r}")


NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def check_cluster(config: DaemonConfig, file: Path) -> None:
    endpoints = config.etcd_endpoints
    if not isinstance(endpoints, tuple) or not all(isinstance(e, str) and re.fullmatch(r"https?://[^/\s]+/?", e)
                                                   for e in endpoints):
        raise InvalidRequest(f"{file}: etcd_endpoints must be a list of etcd client URLs such as "
                             f"[\"http://10.0.0.1:2379\"], not {endpoints!r}")
    if not isinstance(config.node_name, str) or (config.node_name and not NODE_NAME.fullmatch(config.node_name)):
        raise InvalidRequest(f"{file}: node_name must be lowercase letters, digits and -, at most 63, "
                             f"not {config.node_name!r}")
    if endpoints and not NODE_NAME.fullmatch(config.cluster_node):
        raise InvalidRequest(f"{file}: this host's name {config.cluster_node!r} cannot name a cluster node; "
                             "set node_name (lowercase letters, digits and -)")
    if not isinstance(config.node_address, str) or (config.node_address and not re.fullmatch(
            r"https://[^/\s]+/?", config.node_address)):
        raise InvalidRequest(f"{file}: node_address must be an HTTPS URL such as \"https://10.0.0.1:8443\", "
                             f"not {config.node_address!r}")
    ttl = config.cluster_lease_ttl
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 2 <= ttl <= 300:
        raise InvalidRequest(f"{file}: cluster_lease_ttl must be seconds from 2 to 300, not {ttl!r}")


def audit_rotation(config: DaemonConfig, file: Path) -> tuple[int, int]:
    """(bytes per audit file, old files kept) from audit_max_size and audit_keep."""
    from cgroups import parse_size
    from ctd.remote.audit import MAX_KEEP, MIN_MAX_SIZE
    try:
        size = parse_size(config.audit_max_size) if isinstance(config.audit_max_size, str) else -1
    except ValueError:
        size = -1
    if not MIN_MAX_SIZE <= size < 1 << 50:
        raise InvalidRequest(f"{file}: audit_max_size must be a size such as \"10M\" (at least 1K), "
                             f"not {config.audit_max_size!r}")
    keep = config.audit_keep
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= MAX_KEEP:
        raise InvalidRequest(f"{file}: audit_keep must be a whole number from 1 to {MAX_KEEP}, not {keep!r}")
    return size, keep
