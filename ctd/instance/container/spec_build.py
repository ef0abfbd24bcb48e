"""An instance record turned into what the spawner runs: the container's spec (id maps, mount
plan, environment, confinement) and its seccomp deny list. Plain data out, nothing started."""

from __future__ import annotations

from pathlib import Path

from cgroups import CgroupManager
from ctd.instance.container import features, hostmounts
from ctd.instance.container.spec import (
    DEFAULT_NUMPTY,
    DEFAULT_PATH,
    SYSTEMD_TMPFS,
    ContainerSpec,
    IdMap,
    mount_plan,
)
from ctd.linux import capabilities, seccomp
from ctd.lxcfs import Lxcfs
from ctd.state import InstanceRecord


def seccomp_deny(rec: InstanceRecord) -> list[str]:
    """The container's deny list: the default one, less io_uring where it was allowed."""
    return list(seccomp.ALWAYS_DENY if rec.options.io_uring else seccomp.DEFAULT_DENY)


def build_spec(rec: InstanceRecord, rootfs: Path, lxcfs: Lxcfs | None, cgroups: CgroupManager,
               console: bool = True) -> ContainerSpec:
    systemd = rec.options.systemd
    if rec.privileged:
        uid_map: list[IdMap] = []
        gid_map: list[IdMap] = []
    else:
        assert rec.idmap_base is not None
        uid_map = [IdMap(0, rec.idmap_base, 65536)]
        gid_map = [IdMap(0, rec.idmap_base, 65536)]
    return ContainerSpec(
        name=rec.name, hostname=rec.hostname, rootfs=str(rootfs), init=list(rec.init),
        uid_map=uid_map, gid_map=gid_map,
        mounts=mount_plan(console=console, numpty=rec.limits.get("numpty", DEFAULT_NUMPTY),
                          lxcfs=lxcfs.binds() if lxcfs else None,
                          extra_tmpfs=SYSTEMD_TMPFS if systemd else (),
                          cgroupfs=cgroups.guest_mounts() if systemd else None,
                          feature_nodes=features.device_binds(rec.features),
                          host_binds=[(m.source, m.target, m.readonly, m.idmap)
                                      for m in hostmounts.from_stored(rec.mounts)]),
        env=[f"PATH={DEFAULT_PATH}", "container=ctd", "TERM=linux", "HOME=/root"],
        cap_drop=list(capabilities.DEFAULT_DROP),
        seccomp_deny=seccomp_deny(rec),
        console=console,
        nofile=rec.limits.get("numfile"),
    )
