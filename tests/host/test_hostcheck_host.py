"""`ctctl check` on the real host (root): cgroup layout, KVM, the set-up's tools, idmap probe."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import hostcheck
from ctctl.check import check
from hostcheck import Status
from hostcheck.idmap import check_idmapped_mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel")

# Checks whose programs the set-up installs (Debian: btrfs-progs lxcfs nftables dnsmasq-base qemu-system-x86
# ovmf swtpm swtpm-tools genisoimage mmdebstrap busybox-static; PyPI: python-prctl pyroute2).
SETUP_TOOLS = ["tool:btrfs-progs", "tool:lxcfs", "tool:nftables", "tool:dnsmasq", "tool:qemu", "tool:swtpm",
               "tool:genisoimage", "tool:mmdebstrap", "tool:ovmf", "tool:busybox", "python:python-prctl",
               "python:pyroute2"]


@pytest.fixture(scope="module")
def results() -> dict[str, hostcheck.CheckResult]:
    return {r.name: r for r in hostcheck.run_checks()}


def test_cgroup_version(results):
    fstype = subprocess.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True,
                            text=True, check=True).stdout.strip()
    expected = "v2" if fstype == "cgroup2fs" else "v1"  # this machine kind: tmpfs of v1 hierarchies
    r = results["cgroup-version"]
    assert r.status is Status.OK and r.detail.split()[0] == expected, r.detail
    for c in ("memory", "cpu", "pids"):
        assert results[f"cgroup:{c}"].status is Status.OK, results[f"cgroup:{c}"].detail


def test_io_weight_line_says_what_this_host_has(results):
    """bfq is optional (none here, built in or loadable elsewhere): the line follows the host."""
    offered = " ".join(p.read_text() for p in Path("/sys/block").glob("*/queue/scheduler"))
    r = results["cgroup:io-weight"]
    if "bfq" in offered.split() or "[bfq]" in offered:
        assert r.status is Status.OK and "--ioprio works" in r.detail, r.detail
    elif r.status is not Status.OK:   # v2's io.weight also counts; v1 needs bfq
        assert "--ioprio is refused" in r.detail and "modprobe bfq" in r.fix and not r.required


def test_kvm_reported_unusable_with_tcg_fallback(results):
    flags = Path("/proc/cpuinfo").read_text()
    pvm = Path("/sys/module/kvm_pvm").exists() or not any(f in flags.split() for f in ("vmx", "svm"))
    usable, why = hostcheck.kvm_usable()
    r = results["kvm"]
    if pvm:  # this machine kind: /dev/kvm backed by kvm_pvm, no vmx/svm
        assert not usable and r.status is Status.WARN and not r.required
        assert "TCG" in r.detail and why in r.detail and r.fix
    else:
        assert usable and r.status is Status.OK


def test_every_tool_of_the_setup_is_found(results):
    assert "tool:busybox" in results and "tool:btrfs-progs" in results
    missing = {n: results[n].detail for n in SETUP_TOOLS if results[n].status is not Status.OK}
    assert not missing, f"the set-up should have installed these: {missing}"


def test_kernel_config_read_and_required_options_present(results):
    assert results["kernel-config"].status is Status.OK
    bad = [r.name for r in results.values() if r.category.startswith("kernel/")
           and r.required and r.status is not Status.OK]
    assert not bad


def test_idmap_probe_leaves_no_mount(tmp_path):
    before = Path("/proc/self/mountinfo").read_text()
    r = check_idmapped_mounts(tmp_path / "pool", probe=True)
    assert r.status is Status.OK and "probe" in r.detail, r.detail
    assert Path("/proc/self/mountinfo").read_text() == before


def test_ctctl_check_local_exit_zero(tmp_path):
    res = CliRunner().invoke(check, ["--socket", str(tmp_path / "none.sock")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "(daemon not running: local checks only)"
    assert "0 MISSING" in lines[-1]
