"""Daemon settings: embedded defaults, overridden by /etc/ctd/ctd.toml, overridden by flags."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ctd.errors import InvalidRequest

DEFAULT_CONFIG_FILE = Path("/etc/ctd/ctd.toml")
DEFAULT_IDMAP_RANGES = 8192
MAX_ID = 2**32 - 1  # (uid_t)-1 is no id


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
