"""hostcheck's individual checks against fake files: no root, no kernel features."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import hostcheck
from hostcheck import CheckResult, Status
from hostcheck.cgroups import check_cgroups, read_layout
from hostcheck.idmap import existing_parent, pool_filesystem, supported_by_version
from hostcheck.kconfig import check_kernel_config, read_config
from hostcheck.kvm import kvm_usable
from hostcheck.tools import Tool, check_tool, is_static_elf
from hostcheck.userns import check_subid, check_userns_limits, parse_subid

FRAGMENT = Path(__file__).resolve().parents[2] / "kernel-patches" / "ctd.config"
HEADER = "#\n# Linux/x86 6.1.0 Kernel Configuration\n#\n"


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def full_config(tmp_path: Path, drop: set[str] = frozenset(), extra: str = "",
                header: str = HEADER, gz: bool = False) -> Path:
    lines = [l for l in FRAGMENT.read_text().splitlines()
             if l.startswith("CONFIG_") and l.split("=")[0] not in drop]
    text = header + "\n".join(lines) + "\n" + extra
    p = tmp_path / ("config.gz" if gz else "config")
    p.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return p


# --- kernel config ---------------------------------------------------------------------------

def test_missing_required_option_is_missing_with_fix(tmp_path):
    r = by_name(check_kernel_config(full_config(tmp_path, {"CONFIG_USER_NS"},
                                                "# CONFIG_USER_NS is not set\n")))
    user = r["CONFIG_USER_NS"]
    assert user.status is Status.MISSING and user.required
    assert "CONFIG_USER_NS=y" in user.fix and "kernel-patches/ctd.config" in user.fix
    assert hostcheck.exit_code(list(r.values())) == 1


def test_modules_count_as_present_and_optional_is_warn(tmp_path):
    cfg = full_config(tmp_path, {"CONFIG_VETH", "CONFIG_BTRFS_FS"}, "CONFIG_VETH=m\n", gz=True)
    r = by_name(check_kernel_config(cfg))
    assert r["CONFIG_VETH"].status is Status.OK and "=m" in r["CONFIG_VETH"].detail
    assert r["CONFIG_BTRFS_FS"].status is Status.WARN and not r["CONFIG_BTRFS_FS"].required
    assert "CONFIG_BTRFS_FS=m" in r["CONFIG_BTRFS_FS"].fix
    assert hostcheck.exit_code(list(r.values())) == 0


def test_any_of_group(tmp_path):
    r = by_name(check_kernel_config(full_config(tmp_path, {"CONFIG_NET_ACT_POLICE"})))
    assert r["CONFIG_NET_ACT_POLICE"].status is Status.OK and "CONFIG_IFB" in r["CONFIG_NET_ACT_POLICE"].detail
    r = by_name(check_kernel_config(full_config(tmp_path, {"CONFIG_NET_ACT_POLICE", "CONFIG_IFB"})))
    for name in ("CONFIG_NET_ACT_POLICE", "CONFIG_IFB"):
        assert r[name].status is Status.WARN
        assert "CONFIG_NET_ACT_POLICE" in r[name].fix and "CONFIG_IFB" in r[name].fix


def test_since_and_arch(tmp_path):
    # 6.1 has no CONFIG_MEMCG_V1; arm64 has no CONFIG_KVM_INTEL.
    r = by_name(check_kernel_config(full_config(tmp_path, {"CONFIG_MEMCG_V1"})))
    assert r["CONFIG_MEMCG_V1"].status is Status.OK and "not applicable" in r["CONFIG_MEMCG_V1"].detail
    r = by_name(check_kernel_config(full_config(tmp_path, {"CONFIG_MEMCG_V1"},
                                                header="# Linux/x86 6.12.3 Kernel Configuration\n")))
    assert r["CONFIG_MEMCG_V1"].status is Status.WARN
    r = by_name(check_kernel_config(full_config(tmp_path, {"CONFIG_KVM_INTEL", "CONFIG_KVM_AMD"},
                                                header="# Linux/arm64 6.12.3 Kernel Configuration\n")))
    assert r["CONFIG_KVM_INTEL"].status is Status.OK and "arm64" in r["CONFIG_KVM_INTEL"].detail


def test_read_config_header(tmp_path):
    cfg = read_config(full_config(tmp_path, gz=True))
    assert cfg and cfg.version == (6, 1) and cfg.arch == "x86" and cfg.enabled("CONFIG_USER_NS")


def test_unreadable_config_is_a_warning(monkeypatch, tmp_path):
    monkeypatch.setattr("hostcheck.kconfig.default_config_paths", lambda: [tmp_path / "nope"])
    [r] = check_kernel_config()
    assert r.status is Status.WARN and "modprobe configs" in r.fix


# --- cgroups ---------------------------------------------------------------------------------

def fake_layout(tmp_path: Path, v2_root: bool):
    info, own = [], []
    if v2_root:
        root = tmp_path / "unified"
        (root / "ctd.slice").mkdir(parents=True)
        (root / "ctd.slice" / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (root / "ctd.slice" / "memory.swap.max").write_text("max\n")
        (root / "ctd.slice" / "cpu.max").write_text("max 100000\n")
        info.append(f"30 25 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw")
        own.append("0::/ctd.slice")
    else:
        for i, c in enumerate(["cpu", "cpuacct", "cpuset", "memory", "devices", "pids", "blkio"]):
            (tmp_path / c / "job").mkdir(parents=True)
            info.append(f"{31 + i} 25 0:{27 + i} / {tmp_path / c} rw,relatime - cgroup cgroup rw,{c}")
            own.append(f"{i + 1}:{c}:/job")
        (tmp_path / "memory" / "job" / "memory.memsw.limit_in_bytes").write_text("0\n")
        (tmp_path / "unified").mkdir()
        (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb\n")
        info.append(f"40 25 0:40 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw")
    (tmp_path / "mountinfo").write_text("\n".join(info) + "\n")
    (tmp_path / "cgroup").write_text("\n".join(own) + "\n")
    (tmp_path / "cgroups").write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
                                      "memory\t4\t1\t1\nfreezer\t0\t1\t0\n")
    return read_layout(tmp_path / "mountinfo", tmp_path / "cgroup", tmp_path / "cgroups")


def test_cgroup_v1_hybrid(tmp_path, monkeypatch):
    monkeypatch.setattr("hostcheck.cgroups.os.geteuid", lambda: 0)  # as ctd would run
    r = by_name(check_cgroups(fake_layout(tmp_path, v2_root=False)))
    assert r["cgroup-version"].detail.startswith("v1") and "hybrid" in r["cgroup-version"].detail
    assert r["cgroup:memory"].status is Status.OK and str(tmp_path / "memory" / "job") in r["cgroup:memory"].detail
    assert r["cgroup:freezer"].status is Status.WARN and "cgroup_disable" in r["cgroup:freezer"].fix
    assert r["cgroup:memory-swap"].status is Status.OK
    assert r["cgroup:cpu-bandwidth"].status is Status.MISSING  # no cpu.cfs_quota_us in the fake


def test_cgroup_v2(tmp_path):
    r = by_name(check_cgroups(fake_layout(tmp_path, v2_root=True)))
    assert r["cgroup-version"].detail.startswith("v2")
    assert r["cgroup:memory"].status is Status.OK and r["cgroup:io"].status is Status.OK
    assert r["cgroup:devices"].status is Status.OK and "BPF" in r["cgroup:devices"].detail
    assert r["cgroup:memory-swap"].status is Status.OK and r["cgroup:cpu-bandwidth"].status is Status.OK
    assert hostcheck.exit_code(list(r.values())) == 0


def test_cgroup_none(tmp_path):
    (tmp_path / "mi").write_text("")
    [r] = check_cgroups(read_layout(tmp_path / "mi", tmp_path / "x", tmp_path / "y"))
    assert r.status is Status.MISSING and r.required


# --- user namespaces, subuid ------------------------------------------------------------------

def test_userns_limits(tmp_path):
    (tmp_path / "max").write_text("0\n")
    (tmp_path / "clone").write_text("0\n")
    r = check_userns_limits(tmp_path / "max", {"unprivileged_userns_clone": (tmp_path / "clone", 0, "restricted")})
    assert r[0].status is Status.MISSING and "max_user_namespaces" in r[0].fix
    assert r[1].status is Status.OK and "informational" in r[1].detail and "restricted" in r[1].detail
    (tmp_path / "max").write_text("15000\n")
    assert check_userns_limits(tmp_path / "max", {})[0].status is Status.OK


def test_subid(tmp_path):
    assert parse_subid("root:100000:65536\nbad line\n# c\n") == ([("root", 100000, 65536)], ["bad line"])
    assert check_subid(tmp_path / "subuid").status is Status.OK  # absent is fine
    (tmp_path / "subuid").write_text("alice:100000:65536\n")
    r = check_subid(tmp_path / "subuid")
    assert r.status is Status.OK and "alice:100000-165535" in r.detail
    (tmp_path / "subuid").write_text("alice:x:1\n")
    assert check_subid(tmp_path / "subuid").status is Status.WARN


# --- idmapped mounts, KVM, tools -------------------------------------------------------------

def test_pool_filesystem(tmp_path):
    (tmp_path / "mi").write_text(f"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
                                 f"2 1 0:40 / {tmp_path} rw - btrfs /dev/loop0 rw\n")
    fs = pool_filesystem(tmp_path / "missing" / "pool", tmp_path / "mi")
    assert (fs.path, fs.mountpoint, fs.fstype) == (tmp_path, str(tmp_path), "btrfs")
    assert existing_parent(Path("/nonexistent/a/b")) == Path("/")
    assert supported_by_version("btrfs", (5, 14)) is False
    assert supported_by_version("ext4", (6, 1)) is True
    assert supported_by_version("tmpfs", (6, 1)) is False
    assert supported_by_version("zfs", (6, 1)) is None


def test_kvm_usable(tmp_path):
    dev, pvm, cpuinfo = tmp_path / "kvm", tmp_path / "kvm_pvm", tmp_path / "cpuinfo"
    assert kvm_usable(dev, pvm, cpuinfo, "x86_64") == (False, f"{dev} does not exist (KVM module "
                                                       "not loaded, or no hardware virtualization)")
    dev.write_text("")
    pvm.mkdir()
    usable, why = kvm_usable(dev, pvm, cpuinfo, "x86_64")
    assert not usable and "kvm_pvm" in why
    pvm.rmdir()
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 hypervisor\n")
    usable, why = kvm_usable(dev, pvm, cpuinfo, "x86_64")
    assert not usable and "vmx/svm" in why


def test_tools(tmp_path):
    r = check_tool(Tool("sh", ("sh",), "dash", "shell"))
    assert r.status is Status.OK
    r = check_tool(Tool("nope", ("no-such-program-xyz",), "nope-pkg", "nothing"))
    assert r.status is Status.WARN and r.fix == "apt-get install nope-pkg"
    assert is_static_elf(Path(sys.executable).resolve()) is False
    (tmp_path / "f").write_text("#!/bin/sh\n")
    assert is_static_elf(tmp_path / "f") is None


# --- rendering -------------------------------------------------------------------------------

def test_render_json_exit_code():
    results = [CheckResult("a", Status.OK, "fine", "", True, "x"),
               CheckResult("b", Status.WARN, "meh", "do b", False, "x"),
               CheckResult("c", Status.MISSING, "gone", "do c", True, "y")]
    table = hostcheck.render_table(results).splitlines()
    assert any(l.split()[:2] == ["MISSING", "c"] and l.endswith("-> fix: do c") for l in table)
    assert not any("fix" in l for l in table if l.split()[:1] == ["OK"])
    assert "1 OK, 1 WARN, 1 MISSING" in table[-1]
    data = json.loads(hostcheck.to_json(results, source="local"))
    assert data["source"] == "local" and data["exit_code"] == 1
    assert [CheckResult.from_dict(d) for d in data["results"]] == results
    assert hostcheck.exit_code(results) == 1
    assert hostcheck.exit_code(results[:2]) == 0
    assert hostcheck.exit_code([CheckResult("d", Status.MISSING, "", "", False, "x")]) == 0


def test_imports_stay_independent():
    """hostcheck imports nothing from ctd or ctctl; ctctl/check.py never imports ctd."""
    import ast
    root = Path(__file__).resolve().parents[2]
    files = {p: ("ctd", "ctctl") for p in (root / "hostcheck").glob("*.py")}
    files[root / "ctctl" / "check.py"] = ("ctd",)
    for path, banned in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            assert not [n for n in names if n.split(".")[0] in banned], (path, names)
