"""Daemon settings: embedded defaults < TOML file < command-line overrides."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ctd.config import DaemonConfig, load_config
from ctd.errors import InvalidRequest


def test_defaults_when_the_file_is_missing(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "missing.toml", {})
    assert cfg == DaemonConfig()
    assert cfg.state_dir == Path("/var/lib/ctd") and cfg.socket == Path("/run/ctd/ctd.sock")
    assert (cfg.idmap_base, cfg.idmap_size, cfg.cgroup_name) == (1_000_000, 65536, "ctd")
    assert cfg.db_path == Path("/var/lib/ctd/ctd.db") and cfg.storage_dir == Path("/var/lib/ctd/storage")
    assert (cfg.templates_dir / "busybox.toml").exists(), "the embedded templates_dir is the repo's templates/"


def test_toml_overrides_defaults_and_flags_override_toml(tmp_path: Path) -> None:
    file = tmp_path / "ctd.toml"
    file.write_text('state_dir = "/srv/ctd"\nsocket = "/tmp/a.sock"\nidmap_base = 2000000\n'
                    'cgroup_name = "from-file"\nstop_timeout = 5\n')
    cfg = load_config(file, {"socket": "/tmp/flag.sock", "cgroup_name": None, "state_dir": None})
    assert cfg.state_dir == Path("/srv/ctd") and isinstance(cfg.state_dir, Path)
    assert cfg.socket == Path("/tmp/flag.sock") and isinstance(cfg.socket, Path)
    assert cfg.cgroup_name == "from-file", "an override of None leaves the file's value"
    assert cfg.idmap_base == 2_000_000 and cfg.stop_timeout == 5
    assert cfg.idmap_size == 65536 and cfg.socket_group == "ctd", "what nobody set keeps its default"
    assert cfg.db_path == Path("/srv/ctd/ctd.db")


def test_overrides_without_a_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "missing.toml", {"state_dir": str(tmp_path / "s")})
    assert cfg.state_dir == tmp_path / "s"


def test_every_path_setting_becomes_a_path(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "none.toml", {"state_dir": "/a", "socket": "/b", "templates_dir": "/c"})
    for f in dataclasses.fields(DaemonConfig):
        if f.type == "Path":
            assert isinstance(getattr(cfg, f.name), Path), f.name


def test_unknown_keys_are_refused_with_the_known_list(tmp_path: Path) -> None:
    file = tmp_path / "ctd.toml"
    file.write_text('state_dir = "/x"\nsokcet = "/y"\nzzz = 1\n')
    with pytest.raises(InvalidRequest) as e:
        load_config(file, {})
    msg = e.value.message
    assert str(file) in msg and "unknown setting(s) sokcet, zzz" in msg
    known = msg.split("known: ", 1)[1].split(", ")
    assert known == sorted(f.name for f in dataclasses.fields(DaemonConfig))


def test_unknown_override_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="unknown setting.*bogus"):
        load_config(tmp_path / "none.toml", {"bogus": 1})


def test_bad_toml_is_an_invalid_request(tmp_path: Path) -> None:
    file = tmp_path / "ctd.toml"
    file.write_text('state_dir = "/x\nthis is not toml\n')
    with pytest.raises(InvalidRequest) as e:
        load_config(file, {})
    assert str(file) in e.value.message and "not valid TOML" in e.value.message


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "none.toml", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.socket = Path("/elsewhere")  # type: ignore[misc]


@pytest.mark.parametrize("line, what", [('nft_table = "a;b"', "nft_table"), ('nic_prefix = "abc"', "nic_prefix"),
                                        ("idmap_end = 5", "idmap_end"), ("idmap_base = 10", "idmap_base"),
                                        ('idmap_base = "x"', "idmap_base")])
def test_names_of_host_resources_are_checked(tmp_path: Path, line: str, what: str) -> None:
    file = tmp_path / "ctd.toml"
    file.write_text(line + "\n")
    with pytest.raises(InvalidRequest, match=what):
        load_config(file, {})


def test_the_id_area_ends_by_default_after_8192_ranges(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "missing.toml", {})
    assert cfg.idmap_limit == 1_000_000 + 8192 * 65536


def test_owner_block_is_just_below_the_container_ranges() -> None:
    from ctd.config import DaemonConfig
    assert DaemonConfig().owner_base == 1_000_000 - 65536
    assert DaemonConfig(idmap_base=131072).owner_base == 65536
    assert DaemonConfig(idmap_base=100_000).owner_base == 0  # would reach the host's own users


def test_quota_mode_is_full_unless_opted_in_to_simple(tmp_path: Path) -> None:
    assert load_config(tmp_path / "missing.toml", {}).quota_mode == "full"
    file = tmp_path / "ctd.toml"
    file.write_text('quota_mode = "simple"\n')
    assert load_config(file, {}).quota_mode == "simple"
    for bad in ('"squota"', '"Simple"', "true"):
        file.write_text(f"quota_mode = {bad}\n")
        with pytest.raises(InvalidRequest, match=r'quota_mode must be "full" \(the default\) or "simple"'):
            load_config(file, {})
