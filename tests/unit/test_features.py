"""ctd/instance/container/features.py: the names a features field takes, the host check, and
exactly the devices each feature adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgroups import DeviceRule, DeviceType
from ctd.errors import InvalidRequest
from ctd.instance.container import features
from ctd.instance.container.spec import StepKind, mount_plan


@pytest.mark.parametrize(("value", "names"), [
    ("tun", ("tun",)), ("fuse, tun", ("fuse", "tun")), (["tun", "tun"], ("tun",)), ("", ()), ([], ()),
])
def test_a_features_field_is_a_sorted_set_of_known_names(value: object, names: tuple[str, ...]) -> None:
    assert features.check(value) == names


@pytest.mark.parametrize("value", ["tun,kvm", ["nesting"], 3, [1], {"tun": True}])
def test_anything_else_is_refused_naming_what_is_known(value: object) -> None:
    with pytest.raises(InvalidRequest, match="feature"):
        features.check(value)


def test_a_host_without_the_device_is_told_the_kernel_option(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tun").write_text("not a device")      # a regular file is not the device
    with pytest.raises(InvalidRequest, match="CONFIG_TUN"):
        features.host_lacks(("tun",), tmp_path)
    with pytest.raises(InvalidRequest, match="CONFIG_FUSE_FS"):
        features.host_lacks(("fuse",), tmp_path)
    features.host_lacks((), tmp_path)


def test_each_feature_adds_one_rule_and_one_node() -> None:
    assert features.device_rules(["tun"]) == (DeviceRule(DeviceType.CHAR, 10, 200, "rwm"),)
    assert features.device_rules(["fuse", "tun"]) == (DeviceRule(DeviceType.CHAR, 10, 229, "rwm"),
                                                      DeviceRule(DeviceType.CHAR, 10, 200, "rwm"))
    plain = mount_plan(console=False)
    more = mount_plan(console=False, feature_nodes=features.device_binds(["tun", "fuse"]))
    added = [(s.kind, s.target, s.source) for s in more if s not in plain]
    assert added == [(StepKind.MKDIR, "/dev/net", None), (StepKind.BIND_FILE, "/dev/net/tun", "/dev/net/tun"),
                     (StepKind.BIND_FILE, "/dev/fuse", "/dev/fuse")]
