"""Autostart settings: their checks (the range named on bad input) and the order groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctd.config import load_config
from ctd.errors import InvalidRequest
from ctd.instance.bootorder import DEFAULT_BOOT_ORDER, BootSettings, boot_groups, check_boot, shutdown_groups
from ctd.state import InstanceRecord, InstanceType


def rec(id_: int, order: int = DEFAULT_BOOT_ORDER, onboot: bool = True) -> InstanceRecord:
    return InstanceRecord(id=id_, name=f"i{id_}", type=InstanceType.CONTAINER, template="busybox",
                          hostname=f"i{id_}", privileged=False, idmap_base=None, onboot=onboot, boot_order=order)


def test_groups_are_by_order_lowest_first_and_unordered_last() -> None:
    records = [rec(1), rec(2, 5), rec(3, 0), rec(4, 5), rec(5, 10000), rec(6, 0)]
    assert [[r.id for r in g] for g in boot_groups(records)] == [[3, 6], [2, 4], [1, 5]]
    assert [[r.id for r in g] for g in shutdown_groups(records)] == [[1, 5], [2, 4], [3, 6]]
    assert boot_groups([]) == []


def test_a_new_record_is_not_onboot_and_starts_after_every_ordered_one() -> None:
    fresh = InstanceRecord(id=1, name="a", type=InstanceType.VM, template="", hostname="a", privileged=False,
                           idmap_base=None)
    assert (fresh.onboot, fresh.boot_order, fresh.boot_delay) == (False, 10000, 0)


def test_check_boot_takes_what_was_given() -> None:
    assert check_boot({}) == BootSettings() and not check_boot({}).given
    assert check_boot({"onboot": "yes", "boot_order": "7", "boot_delay": 3600}) == BootSettings(True, 7, 3600)
    assert check_boot({"onboot": False, "boot_order": 0, "boot_delay": 0}) == BootSettings(False, 0, 0)
    target = rec(1, 3, onboot=False)
    BootSettings(boot_delay=9).apply(target)
    assert (target.onboot, target.boot_order, target.boot_delay) == (False, 3, 9)


@pytest.mark.parametrize(("body", "words"), [
    ({"boot_order": 10001}, "boot_order must be a whole number from 0 to 10000"),
    ({"boot_order": -1}, "from 0 to 10000"),
    ({"boot_order": 1.5}, "from 0 to 10000"),
    ({"boot_order": True}, "from 0 to 10000"),
    ({"boot_delay": 3601}, "boot_delay must be a whole number from 0 to 3600"),
    ({"boot_delay": "1e3"}, "from 0 to 3600"),
    ({"onboot": "maybe"}, "onboot must be yes or no"),
    ({"onboot": 1}, "onboot must be yes or no"),
])
def test_bad_values_name_the_range(body: dict, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        check_boot(body)


@pytest.mark.parametrize("value", ["0", "257", "true", '"4"'])
def test_boot_concurrency_must_be_1_to_256(tmp_path: Path, value: str) -> None:
    config = tmp_path / "ctd.toml"
    config.write_text(f"boot_concurrency = {value}\n")
    with pytest.raises(InvalidRequest, match="boot_concurrency must be a whole number from 1 to 256"):
        load_config(config, {})
    config.write_text('boot_concurrency = 8\nboot_id_file = "/tmp/x"\n')
    loaded = load_config(config, {})
    assert loaded.boot_concurrency == 8 and str(loaded.boot_id_file) == "/tmp/x"
