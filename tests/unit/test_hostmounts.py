"""ctd/instance/container/hostmounts.py: what a mount entry may be, refused with a message that
says what to give instead; the idmap namespace's map; the policy keeps host paths with admins."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctd.errors import InvalidRequest
from ctd.instance.container import hostmounts
from ctd.instance.container.spec import StepKind, idmap_lines, mount_plan
from ctd.linux import syscalls as sc
from ctd.remote.identity import Role
from ctd.remote import policy


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "share").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "file").write_text("x")
    return tmp_path.resolve(), tmp_path.resolve() / "state"


def test_entries_in_both_forms(tree: tuple[Path, Path]) -> None:
    root, state = tree
    got = hostmounts.check([f"{root}/share:/data", f"{root}/file:/etc/x:ro,idmap",
                            {"source": f"{root}/share", "target": "/srv", "readonly": True}], state, False)
    assert [m.text for m in got] == [f"{root}/share:/data", f"{root}/file:/etc/x:ro,idmap", f"{root}/share:/srv:ro"]
    assert hostmounts.from_stored([m.to_stored() for m in got]) == got


@pytest.mark.parametrize(("entry", "said"), [
    ("{root}/share", "SOURCE:TARGET"),
    ("{root}/share:/data:exec", "unknown option"),
    ("share:/data", "absolute path"),
    ("{root}/share/:/data", "canonical"),
    ("{root}/share/../share:/data", "canonical"),
    ("{root}/missing:/data", "does not exist"),
    ("{root}/state:/data", "state directory"),
    ("{root}:/data", "state directory"),          # holds the state dir
    ("/:/data", "host's /"),
    ("/proc:/data", "/proc"),
    ("/dev/shm:/data", "/dev"),
    ("{root}/share:/", "mount target"),
    ("{root}/share:/sys/kernel", "mount target"),
    ("{root}/share:data", "absolute path"),
])
def test_refused_entries_name_the_problem(tree: tuple[Path, Path], entry: str, said: str) -> None:
    root, state = tree
    with pytest.raises(InvalidRequest, match=said):
        hostmounts.check([entry.format(root=root)], state, False)


def test_a_symlinked_source_a_duplicate_target_idmap_on_privileged_and_too_many(tree: tuple[Path, Path]) -> None:
    root, state = tree
    (root / "link").symlink_to(root / "share")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        hostmounts.check([f"{root}/link:/data"], state, False)
    with pytest.raises(InvalidRequest, match="given twice"):
        hostmounts.check([f"{root}/share:/data", f"{root}/file:/data"], state, False)
    with pytest.raises(InvalidRequest, match="unprivileged"):
        hostmounts.check([f"{root}/share:/data:idmap"], state, True)
    with pytest.raises(InvalidRequest, match="at most 16"):
        hostmounts.check([f"{root}/share:/d{i}" for i in range(17)], state, False)
    with pytest.raises(InvalidRequest, match="list"):
        hostmounts.check(f"{root}/share:/data", state, False)


def test_the_idmap_namespace_leaves_host_root_unmapped() -> None:
    assert idmap_lines(700000000) == "1 700000001 65535\n"


def test_a_bind_is_nosuid_nodev_made_last_with_its_parents() -> None:
    plan = mount_plan(console=False, host_binds=[("/srv/a", "/srv/data/x", True, True)])
    tail = plan[-3:]
    assert [(s.kind, s.target) for s in tail] == [(StepKind.MKDIR, "/srv"), (StepKind.MKDIR, "/srv/data"),
                                                   (StepKind.BIND_HOST, "/srv/data/x")]
    assert tail[-1].flags == sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_RDONLY
    assert tail[-1].data == "idmap"


@pytest.mark.parametrize("role", [Role.TENANT, Role.OPERATOR])
def test_only_an_admin_names_host_paths(role: Role) -> None:
    for method, path, body in (("PATCH", "/1.0/instances/{ref}", {"mounts": ["/srv:/srv"]}),
                               ("PATCH", "/1.0/instances/{ref}", {"unmount": ["/srv"]}),
                               ("POST", "/1.0/instances", {"name": "a", "mounts": ["/srv:/srv"]})):
        fields = policy.rule_for(path, method).fields
        assert fields is not None
        denied = policy.check_body(role, fields, body)
        assert denied is not None and denied.needs is Role.ADMIN
