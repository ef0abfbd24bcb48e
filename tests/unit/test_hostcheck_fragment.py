"""kernel-patches/ctd.config: format, annotations, one source of truth for the checker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hostcheck
from hostcheck.fragment import FragmentError, load_fragment, parse_fragment
from hostcheck.kconfig import check_kernel_config

ROOT = Path(__file__).resolve().parents[2]
FRAGMENT = ROOT / "kernel-patches" / "ctd.config"
PACKAGED = ROOT / "hostcheck" / "data" / "ctd.config"
# Options the issue names: namespaces incl. user, cgroup features, memcg swap, CFS bandwidth,
# pids, blkio/io, cpusets, veth, bridge, nf_tables, tc (htb/tbf, police or ifb), btrfs, overlay, KVM.
NAMED = {"CONFIG_USER_NS", "CONFIG_PID_NS", "CONFIG_NET_NS", "CONFIG_CGROUPS", "CONFIG_MEMCG",
         "CONFIG_SWAP", "CONFIG_CFS_BANDWIDTH", "CONFIG_CGROUP_PIDS", "CONFIG_BLK_CGROUP",
         "CONFIG_CPUSETS", "CONFIG_VETH", "CONFIG_BRIDGE", "CONFIG_NF_TABLES", "CONFIG_NET_SCH_HTB",
         "CONFIG_NET_SCH_TBF", "CONFIG_NET_ACT_POLICE", "CONFIG_IFB", "CONFIG_BTRFS_FS",
         "CONFIG_OVERLAY_FS", "CONFIG_KVM"}


def test_packaged_copy_is_identical():
    assert PACKAGED.read_bytes() == FRAGMENT.read_bytes(), \
        "hostcheck/data/ctd.config differs: cp kernel-patches/ctd.config hostcheck/data/"


def test_installed_package_falls_back_to_its_copy(monkeypatch, tmp_path):
    monkeypatch.setattr("hostcheck.fragment.REPO_FRAGMENT", tmp_path / "absent")
    from hostcheck.fragment import fragment_path
    assert fragment_path().read_bytes() == FRAGMENT.read_bytes()
    assert fragment_path().parts[-2:] == ("data", "ctd.config")


def test_lines_are_what_merge_config_accepts():
    # merge_config.sh takes CONFIG_X=val lines and '# CONFIG_X is not set'; the rest are comments.
    for line in FRAGMENT.read_text().splitlines():
        assert line == "" or line.startswith("#") or re.fullmatch(r"CONFIG_[A-Z0-9_]+=[ym]", line), line


def test_every_option_is_annotated_and_named_ones_present():
    options = load_fragment(FRAGMENT)
    names = {o.name for o in options}
    assert NAMED <= names, NAMED - names
    assert all(o.purpose and o.section != "general" for o in options)
    required = {o.name for o in options if o.required}
    assert {"CONFIG_USER_NS", "CONFIG_VETH", "CONFIG_BRIDGE", "CONFIG_CGROUPS"} <= required
    assert {"CONFIG_BTRFS_FS", "CONFIG_KVM", "CONFIG_OVERLAY_FS"}.isdisjoint(required)
    groups = {o.any_of for o in options if o.any_of}
    assert {"ingress-limit", "kvm-vendor"} <= groups


def test_checker_and_fragment_agree():
    """Every option the checker knows is in the fragment, and every fragment option is checked."""
    names = {o.name for o in load_fragment(FRAGMENT)}
    known = set()
    for src in (ROOT / "hostcheck").glob("*.py"):
        known |= set(re.findall(r"\bCONFIG_[A-Z0-9_]+\b", src.read_text()))
    assert known - names == set(), f"the checker names options missing from ctd.config: {known - names}"
    # The fragment is itself a kernel config with every option set.
    results = [r for r in check_kernel_config(FRAGMENT) if r.name.startswith("CONFIG_")]
    assert {r.name for r in results} == names
    assert len(results) == len(names)


def test_annotation_errors():
    with pytest.raises(FragmentError, match="no '# required:'"):
        parse_fragment("CONFIG_FOO=y\n")
    with pytest.raises(FragmentError, match="unknown annotation"):
        parse_fragment("# required colour=red: x\nCONFIG_FOO=y\n")
    with pytest.raises(FragmentError, match="twice"):
        parse_fragment("# required: a\nCONFIG_FOO=y\n# optional: b\nCONFIG_FOO=m\n")
    with pytest.raises(FragmentError, match="not a CONFIG_"):
        parse_fragment("FOO=y\n")


def test_annotation_attributes():
    [a, b] = parse_fragment("## net\n# optional any=g since=6.11 arch=x86: thing\nCONFIG_A=m\n"
                            "# required: other\nCONFIG_B=y\n")
    assert (a.any_of, a.since, a.arch, a.required, a.value, a.section) == ("g", (6, 11), "x86", False, "m", "net")
    assert b.required and b.any_of is None


def test_public_api():
    assert callable(hostcheck.run_checks) and callable(hostcheck.kvm_usable)
    assert {s.value for s in hostcheck.Status} == {"OK", "WARN", "MISSING"}
