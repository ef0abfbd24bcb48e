"""The container mount plan and the spawner's wire format (pure data, no root)."""
from __future__ import annotations

import json

import pytest

from ctd.instance.container import spec
from ctd.instance.container.spec import (ContainerSpec, ExecSpec, IdMap, MountStep, StepKind,
                                         container_from_wire, exec_from_wire, mount_plan, to_wire)
from ctd.linux import syscalls as sc

K = StepKind


def index(plan: list[MountStep], kind: StepKind, target: str) -> int:
    hits = [i for i, s in enumerate(plan) if s.kind is kind and s.target == target]
    assert len(hits) == 1, f"expected exactly one {kind.value} step for {target}, got {len(hits)}"
    return hits[0]


def step(plan: list[MountStep], kind: StepKind, target: str) -> MountStep:
    return plan[index(plan, kind, target)]


@pytest.fixture(params=[True, False], ids=["console", "no-console"])
def plan(request: pytest.FixtureRequest) -> list[MountStep]:
    return mount_plan(console=request.param)


def test_proc_is_mounted_first(plan: list[MountStep]) -> None:
    first = plan[0]
    assert (first.kind, first.target, first.source, first.fstype) == (K.MOUNT, "/proc", "proc", "proc")
    assert first.flags & sc.MS_NOSUID and first.flags & sc.MS_NODEV and first.flags & sc.MS_NOEXEC
    assert not first.optional


def test_proc_sys_read_only_except_net(plan: list[MountStep]) -> None:
    net = index(plan, K.MOUNT, "/proc/sys/net")
    ro = index(plan, K.REMOUNT_RO, "/proc/sys")
    assert net < ro, "/proc/sys/net must be bound before /proc/sys is made read-only"
    assert plan[net].source == "/proc/sys/net" and plan[net].flags & sc.MS_BIND
    assert not plan[net].flags & sc.MS_RDONLY
    assert index(plan, K.MOUNT, "/proc") < net
    # no step after the read-only remount makes /proc/sys or anything under it writable again
    for s in plan[ro + 1:]:
        assert not (s.target.startswith("/proc/sys") and s.kind is K.MOUNT and s.flags & sc.MS_BIND)


def test_sys_is_read_only(plan: list[MountStep]) -> None:
    s = step(plan, K.MOUNT, "/sys")
    assert s.fstype == "sysfs" and s.flags & sc.MS_RDONLY
    assert s.flags & sc.MS_NOSUID and s.flags & sc.MS_NODEV and s.flags & sc.MS_NOEXEC
    assert not s.optional


def test_dev_tmpfs_comes_before_every_device_bind(plan: list[MountStep]) -> None:
    dev = index(plan, K.MOUNT, "/dev")
    assert plan[dev].fstype == "tmpfs" and not plan[dev].optional
    assert plan[dev].flags & sc.MS_NOSUID and plan[dev].flags & sc.MS_NOEXEC and plan[dev].flags & sc.MS_NODEV
    for name in spec.DEVICES:
        i = index(plan, K.BIND_FILE, f"/dev/{name}")
        assert i > dev
        assert plan[i].source == f"/dev/{name}" and not plan[i].optional
    # only the harmless devices (and the console) are bound into /dev
    bound = {s.target for s in plan if s.kind is K.BIND_FILE and s.target.startswith("/dev/")}
    assert bound - {"/dev/console"} == {f"/dev/{d}" for d in ("null", "zero", "full", "random", "urandom", "tty")}


def test_every_step_under_a_pseudo_fs_follows_its_mount(plan: list[MountStep]) -> None:
    for base in ("/proc", "/sys", "/dev"):
        mounted = index(plan, K.MOUNT, base)
        for i, s in enumerate(plan):
            if s.target.startswith(base + "/"):
                assert i > mounted, f"{s.kind.value} {s.target} runs before {base} is mounted"


def test_devpts_is_a_new_instance_with_group_tty(plan: list[MountStep]) -> None:
    mkdir = index(plan, K.MKDIR, "/dev/pts")
    mount = index(plan, K.MOUNT, "/dev/pts")
    assert mkdir < mount
    pts = plan[mount]
    options = pts.data.split(",")
    assert pts.fstype == "devpts" and "newinstance" in options and "gid=5" in options
    assert "ptmxmode=0666" in options and "max=256" in options  # numpty's default
    ptmx = step(plan, K.SYMLINK, "/dev/ptmx")
    assert ptmx.source == "pts/ptmx" and plan.index(ptmx) > mount


def test_shm_and_mqueue(plan: list[MountStep]) -> None:
    assert index(plan, K.MKDIR, "/dev/shm") < index(plan, K.MOUNT, "/dev/shm")
    assert "mode=1777" in step(plan, K.MOUNT, "/dev/shm").data
    assert step(plan, K.MOUNT, "/dev/mqueue").optional  # kernels without POSIX mqueue


@pytest.mark.parametrize("console", [True, False])
def test_console_step_only_with_console(console: bool) -> None:
    plan = mount_plan(console=console)
    steps = [s for s in plan if s.target == "/dev/console"]
    if console:
        assert len(steps) == 1
        assert steps[0].kind is K.BIND_FILE and steps[0].source == "@console"
        assert plan.index(steps[0]) > index(plan, K.MOUNT, "/dev")
    else:
        assert steps == []


def test_masked_files_are_bound_from_dev_null(plan: list[MountStep]) -> None:
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/kallsyms"):
        s = step(plan, K.BIND_FILE, path)
        assert s.source == "/dev/null"
        assert s.optional, f"{path} does not exist on every kernel: its step must be optional"


def test_read_only_proc_paths(plan: list[MountStep]) -> None:
    for path in ("/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"):
        assert step(plan, K.REMOUNT_RO, path).optional


def test_masked_dirs_share_one_empty_read_only_tmpfs(plan: list[MountStep]) -> None:
    first, *others = spec.MASKED_DIRS
    assert first == "/sys/firmware"  # exists on every kernel, so the binds below have a source
    s = step(plan, K.MOUNT, first)
    assert s.fstype == "tmpfs" and s.flags & sc.MS_RDONLY and s.optional and "size=0" in s.data
    for path in others:
        s = step(plan, K.MOUNT, path)
        assert s.source == first and s.flags == sc.MS_BIND and s.fstype is None and s.optional
        assert plan.index(s) > plan.index(step(plan, K.MOUNT, first))


def test_optional_only_where_a_path_may_be_missing(plan: list[MountStep]) -> None:
    required = {(s.kind, s.target) for s in plan if not s.optional}
    for must in [(K.MOUNT, "/proc"), (K.REMOUNT_RO, "/proc/sys"), (K.MOUNT, "/sys"), (K.MOUNT, "/dev"),
                 (K.MOUNT, "/dev/pts"), (K.BIND_FILE, "/dev/null")]:
        assert must in required, f"{must[0].value} {must[1]} must not be skipped silently"


def test_every_target_is_absolute_and_clean(plan: list[MountStep]) -> None:
    for s in plan:
        assert s.target.startswith("/") and ".." not in s.target.split("/"), s


def test_extra_tmpfs_is_made_and_mounted_after_the_base_mounts() -> None:
    plan = mount_plan(console=False, extra_tmpfs=(("/run", "mode=755"), ("/tmp", "mode=1777")))
    for path, mode in (("/run", "mode=755"), ("/tmp", "mode=1777")):
        s = step(plan, K.MOUNT, path)
        assert s.fstype == "tmpfs" and s.data == mode and s.flags & sc.MS_NOSUID
        assert plan.index(step(plan, K.MKDIR, path)) < plan.index(s)
        assert plan.index(s) > plan.index(step(plan, K.MOUNT, "/dev"))
    assert not any(s.target == "/run" for s in mount_plan(console=False))


def test_cgroup_filesystems_for_systemd_guests() -> None:
    plan = mount_plan(console=False, cgroupfs=[("memory", "cgroup", "memory"), ("unified", "cgroup2", "")])
    base = step(plan, K.MOUNT, "/sys/fs/cgroup")
    memory = step(plan, K.MOUNT, "/sys/fs/cgroup/memory")
    unified = step(plan, K.MOUNT, "/sys/fs/cgroup/unified")
    assert base.fstype == "tmpfs" and plan.index(base) > plan.index(step(plan, K.MOUNT, "/sys"))
    assert memory.fstype == "cgroup" and memory.data == "memory" and unified.fstype == "cgroup2"
    assert plan.index(base) < plan.index(memory)
    assert not any(s.target.startswith("/sys/fs/cgroup") for s in mount_plan(console=False))


# ---------------------------------------------------------------- wire format

def sample_container() -> ContainerSpec:
    return ContainerSpec(
        name="web", hostname="web.example", rootfs="/var/lib/ctd/storage/instances/web/rootfs",
        init=["/sbin/init", "--verbose"],
        uid_map=[IdMap(0, 1_000_000, 65536)], gid_map=[IdMap(0, 1_000_000, 65536)],
        mounts=mount_plan(console=True, extra_tmpfs=(("/run", "mode=755"),)),
        env=["container=ctd", "TERM=linux"], cap_drop=["sys_module"], seccomp_deny=["kexec_load"],
        console=True)


def test_container_spec_round_trips_through_json() -> None:
    original = sample_container()
    wire = json.loads(json.dumps(to_wire(original)))
    back = container_from_wire(wire)
    assert back == original
    assert all(isinstance(m.kind, StepKind) for m in back.mounts)
    assert all(isinstance(m, IdMap) for m in back.uid_map + back.gid_map)
    assert back.uid_map[0].line() == "0 1000000 65536"
    assert not back.privileged


def test_privileged_container_round_trip() -> None:
    original = sample_container()
    original.uid_map, original.gid_map, original.console = [], [], False
    back = container_from_wire(json.loads(json.dumps(to_wire(original))))
    assert back == original and back.privileged


def test_from_wire_does_not_change_its_input() -> None:
    wire = json.loads(json.dumps(to_wire(sample_container())))
    snapshot = json.dumps(wire, sort_keys=True)
    container_from_wire(wire)
    assert json.dumps(wire, sort_keys=True) == snapshot


def test_exec_spec_round_trips_through_json() -> None:
    original = ExecSpec(init_pid=4242, command=["/bin/sh", "-c", "echo hi"], env=["PATH=" + spec.DEFAULT_PATH],
                        cwd="/root", privileged=False, cgroup_procs=["/x/cgroup.procs"],
                        cap_drop=["sys_time"], seccomp_deny=["bpf"], tty=True)
    assert exec_from_wire(json.loads(json.dumps(to_wire(original)))) == original


def test_unknown_wire_field_is_refused() -> None:
    wire = json.loads(json.dumps(to_wire(sample_container())))
    wire["surprise"] = 1
    with pytest.raises(TypeError):
        container_from_wire(wire)


def test_devpts_max_is_numpty() -> None:
    pts = step(mount_plan(console=False, numpty=7), K.MOUNT, "/dev/pts")
    assert "max=7" in pts.data.split(",")
