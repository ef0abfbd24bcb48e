"""The limit arithmetic of projects (ctd/project/model.py): what fits, what is refused and what
the refusal says; normalising a request's limits."""
from __future__ import annotations

import pytest

from ctd.errors import InvalidRequest
from ctd.project import model
from ctd.project.model import Project, Usage

G = 1 << 30


def acme(**limits: int) -> Project:
    return Project("acme", limits=limits)


def test_the_last_place_fits_and_the_next_is_refused_naming_limit_and_usage() -> None:
    p = acme(instances=5)
    four, five = Usage(instances=4), Usage(instances=5)
    assert model.refusal(p, four, four + Usage(instances=1)) is None
    why = model.refusal(p, five, five + Usage(instances=1))
    assert why == "project acme: 5 instances of 5; raise limits.instances or destroy one"


def test_sums_of_ram_cpus_and_disk_are_limited_with_sizes_shown() -> None:
    p = acme(ram=2 * G, cpus=4, disk=10 * G)
    used = Usage(instances=1, ram=G + G // 2, cpus=2, disk=5 * G)
    why = model.refusal(p, used, used + Usage(instances=1, ram=G))
    assert why is not None and why.startswith("project acme: ram") and "of 2G" in why and "1G more" in why
    assert "raise limits.ram" in why
    assert model.refusal(p, used, used + Usage(cpus=2)) is None, "exactly at the limit fits"
    assert "limits.cpus" in (model.refusal(p, used, used + Usage(cpus=3)) or "")
    assert "limits.disk" in (model.refusal(p, used, used + Usage(disk=6 * G)) or "")


def test_addresses_and_snapshots() -> None:
    p = acme(addresses=2, snapshots=3)
    assert "limits.addresses" in (model.refusal(p, Usage(addresses=2), Usage(addresses=3)) or "")
    assert "limits.snapshots" in (model.refusal(p, Usage(snapshots=3), Usage(snapshots=4)) or "")
    assert model.refusal(p, Usage(snapshots=2), Usage(snapshots=3)) is None


def test_a_lowered_limit_refuses_growth_but_not_shrinking_or_standing_still() -> None:
    p = acme(ram=G)
    over = Usage(instances=2, ram=2 * G)
    assert model.refusal(p, over, over) is None
    assert model.refusal(p, over, over - Usage(ram=G // 2)) is None
    assert model.refusal(p, over, over + Usage(ram=1)) is not None


def test_unlimited_figures_are_not_checked() -> None:
    assert model.refusal(acme(), Usage(), Usage(instances=10 ** 6, ram=10 ** 15)) is None


def test_an_instance_without_a_limit_the_project_sums_is_refused() -> None:
    p = acme(ram=8 * G)
    why = model.missing_limit(p, {})
    assert why is not None and "limits ram" in why and "--ram" in why
    assert model.missing_limit(p, {"ram": G}) is None
    assert "diskspace" in (model.missing_limit(acme(disk=G), {"ram": G}) or "")
    assert model.missing_limit(acme(disk=G), {}, vm=True) is None, "a VM's disk always has a size"


def test_instance_usage_counts_its_limits() -> None:
    u = model.instance_usage({"ram": G, "cpus": 2, "diskspace": 3 * G}, addresses=2, snapshots=1)
    assert u == Usage(instances=1, ram=G, cpus=2, disk=3 * G, addresses=2, snapshots=1)
    assert model.instance_usage({"diskspace": G}, vm_disk=5 * G).disk == 5 * G


def test_check_limits_normalises_and_refuses_nonsense() -> None:
    assert model.check_limits({"ram": "8G", "instances": 5, "cpus": "4", "disk": "unlimited", "snapshots": None}) \
        == {"ram": 8 * G, "instances": 5, "cpus": 4, "disk": None, "snapshots": None}
    for bad, word in [({"ramm": 1}, "unknown project limit"), ({"ram": "lots"}, "limits.ram"),
                      ({"instances": True}, "limits.instances"), ({"instances": -1}, "limits.instances"),
                      ({"cpus": 1.5}, "limits.cpus"), ([], "must be an object")]:
        with pytest.raises(InvalidRequest, match=word):
            model.check_limits(bad)
    assert model.merged({"ram": G, "cpus": 2}, {"ram": None, "instances": 3}) == {"cpus": 2, "instances": 3}


@pytest.mark.parametrize("name", ["acme", "a", "c0ffee", "x" * 31])
def test_project_names(name: str) -> None:
    assert model.check_name(name) == name


@pytest.mark.parametrize("name", ["", "Acme", "ac-me", "1acme", "x" * 32, "a.b", None, 3, "acme\n"])
def test_bad_project_names(name: object) -> None:
    with pytest.raises(InvalidRequest, match="project name"):
        model.check_name(name)
