"""Daemon settings: embedded defaults, overridden by /etc/ctd/ctd.toml, overridden by flags."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ctd.errors import InvalidRequest

DEFAULT_CONFIG_FILE = Path("/etc/ctd/ctd.toml")


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/ctd")
    socket: Path = Path("/run/ctd/ctd.sock")
    socket_group: str = "ctd"
    # First host id handed to containers; each container takes 65536 ids from here up,
    # skipping ranges that /etc/subuid or /etc/subgid give to host users.
    idmap_base: int = 1_000_000
    idmap_size: int = 65536
    # cgroup directory ctd creates below its own cgroup in every hierarchy.
    cgroup_name: str = "ctd"
    # nftables table (bridge and inet families) holding the anti-spoofing rules.
    nft_table: str = "ctd"
    # Host ends of NICs are named <prefix><id>.<n>; two letters.
    nic_prefix: str = "ve"
    stop_timeout: float = 30.0
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
        typed[name] = Path(str(value)) if kind == "Path" else value
    return DaemonConfig(**typed)  # type: ignore[arg-type]
