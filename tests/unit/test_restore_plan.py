"""A backup's header is untrusted input: ctd/instance/restore_plan.py checks every field like a
create request or replaces it by a safe default (fake manager: no root, no kernel). The API test
posts tampered backups to /1.0/restore through the real handler and Transfers."""
from __future__ import annotations

import copy
import io
import json
import re
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ctd.errors import InvalidRequest, NotFound
from ctd.instance.context import InstanceContext
from ctd.instance.kinds import Kinds
from ctd.instance.provision import Provisioner
from ctd.instance.restore_plan import plan_restore
from ctd.instance.transfer import Transfers
from ctd.network.manager import NetworkManager
from ctd.state import NicMode
from ctd.template.recipe import Recipe
from tests.unit.test_core_api import Env, error_of, serve

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx7bLXa2cW2b2oU4y0nJbqU8Qm2F1m5VwS0a1b2c3d4 me@host"
HASH = "$6$salt$" + "a" * 86


class FakeNetworks:
    """NetworkManager.check_nics on a host with one network, 'lan'."""

    check_nics = NetworkManager.check_nics
    default_network = "ctbr0"

    def network(self, name: str) -> object:
        if name != "lan":
            raise NotFound(f"no network named {name!r}")
        return SimpleNamespace(name=name)


class FakeManager:
    """What plan_restore (the InstanceContext) and Transfers.check_restore (the InstanceManager)
    use: one object plays both."""

    check_io_device = InstanceContext.check_io_device

    def __init__(self, io_device: str | None = "8:0") -> None:
        self.host_cpus = [0, 1]
        self.io_device = io_device
        self.storage = SimpleNamespace(root=Path("/pool"))
        self.cgroups = SimpleNamespace(io_weight_file=lambda: "blkio.bfq.weight")  # a host with bfq
        self.db = SimpleNamespace(get_network=lambda name: object() if name == "lan" else None)
        self.network = FakeNetworks()
        self.templates = SimpleNamespace(recipe_of=self._recipe)
        self.reserved: list[str] = []
        self.ctx = self

    @staticmethod
    def _recipe(name: str) -> Recipe:
        if name != "busybox":
            raise NotFound(f"no template {name!r}")
        return Recipe(name="busybox", builder="busybox", init=["/sbin/init"], stop_signal="SIGUSR2",
                      network_style="ip")

    def reserve(self, name: str, instance_id: int | None, hint: str) -> int:
        self.reserved.append(name)
        return 100


def header(**meta: Any) -> dict[str, Any]:
    """What ctd's backup writes for a running, privileged, unfiltered container (Transfers.meta
    before this change: options with runtime state), with meta's keys replaced."""
    base = {"name": "web", "template": "busybox", "hostname": "web.example.org", "privileged": True,
            "limits": {"ram": 512 << 20, "ram_high": 256 << 20, "numproc": 100, "diskspace": 1 << 30},
            "init": ["/sbin/init"], "stop_signal": "SIGUSR2",
            "options": {"systemd": False, "network_style": "ip", "ssh_keys": [KEY], "timezone": "UTC",
                        "nameservers": ["192.0.2.53"], "cgroup_fixed": {"memory": "ct-other"},
                        "passwd": {"user": "root", "hash": HASH}},
            "nics": [{"network": "lan", "mode": "bridged", "filter": False, "rate": 10_000_000,
                      "addresses": ["10.9.0.5"], "mac": "02:00:00:00:00:01"}]}
    base.update(meta)
    return {"format": "ctd-backup", "version": 1, "driver": "tar", "member": "rootfs.tar.zst", "name": "web",
            "meta": base}


def plan(meta: dict | None = None, **body: Any):  # type: ignore[no-untyped-def]
    return plan_restore(FakeManager(), header(**(meta or {})), body)  # type: ignore[arg-type]


def test_a_header_as_ctd_writes_it_restores_safely() -> None:
    p = plan()
    assert p.privileged is False and any("privileged" in n for n in p.notes)
    assert [n.filter for n in p.nics] == [True]
    assert [(n.network, n.mode, n.addresses, n.rate) for n in p.nics] == [("lan", NicMode.BRIDGED, [], 10_000_000)]
    assert "cgroup_fixed" not in p.options.to_stored() and any("cgroup_fixed" in n for n in p.notes)
    assert p.options.to_stored() == {"systemd": False, "network_style": "ip", "ssh_keys": [KEY], "timezone": "UTC",
                         "nameservers": ["192.0.2.53"], "passwd": {"user": "root", "hash": HASH}}
    # the state's limits survive the trip (ram's barrier kept apart as ram_high)
    assert p.limits == header()["meta"]["limits"]
    assert (p.name, p.hostname, p.template, p.new_identity) == ("web", "web.example.org", "busybox", False)
    assert (p.init, p.stop_signal) == (["/sbin/init"], "SIGUSR2")


def test_admin_flags_never_come_from_the_file_but_labels_do() -> None:
    p = plan({"disabled": False, "protected": False, "description": "shop", "tags": {"customer": "acme"}})
    assert (p.description, p.tags) == ("shop", {"customer": "acme"})
    assert not hasattr(p, "disabled") and not hasattr(p, "protected")
    assert any("disabled" in n and "protected" in n for n in p.notes)   # named as ignored
    for meta, why in (({"description": "x\x1b[2J"}, "U+001B"), ({"tags": {"../k": "v"}}, "invalid tag key"),
                      ({"tags": {f"k{i}": "v" for i in range(1000)}}, "at most 64"), ({"tags": "a=b"}, "object")):
        with pytest.raises(InvalidRequest, match=r"backup header, description or tags: .*" + re.escape(why)):
            plan(meta)


def test_only_the_admin_makes_it_privileged_or_unfiltered() -> None:
    assert plan(privileged=True).privileged is True
    assert plan({"privileged": False}, privileged=True).privileged is True
    assert [n.filter for n in plan(filter=False).nics] == [False]
    assert [n.filter for n in plan({"nics": [{"network": "lan", "filter": True}]}, filter=False).nics] == [False]
    for flag in ("privileged", "filter"):
        with pytest.raises(InvalidRequest, match=f"{flag} must be true or false"):
            plan(**{flag: "yes"})


def test_another_name_is_a_copy_with_a_new_identity() -> None:
    p = plan(name="web-copy")
    assert (p.name, p.hostname, p.new_identity) == ("web-copy", "web-copy", True)


@pytest.mark.parametrize("meta, field, why", [
    ({"limits": {"numproc": "abc"}}, "limits", "invalid numproc 'abc'"),
    ({"limits": {"ram": -5}}, "limits", "invalid ram '-5'"),
    ({"limits": {"ram": "0"}}, "limits", "must be at least"),
    ({"limits": {"numproc": 10**30}}, "limits", "from 1 to 4194304"),
    ({"limits": {"cpus": 4096}}, "limits", "this host has only 2 CPU"),
    ({"limits": {"cpulimit": 10**9}}, "limits", "at most 200"),
    ({"limits": {"cpuunits": 10**12}}, "limits", "from 8 to 500000"),
    ({"limits": {"ioprio": -1}}, "limits", "invalid ioprio -1"),
    ({"limits": {"numproc": True}}, "limits", "expected a whole number"),
    ({"limits": {"swap": "1G"}}, "limits", "swap needs a ram limit"),
    ({"limits": {"ram_high": 1 << 30}}, "limits", "ram_high without ram"),
    ({"limits": {"ram": 1 << 20, "ram_high": 1 << 30}}, "limits", "at least"),
    ({"limits": {"evil": 1}}, "limits", "unknown limit"),
    ({"limits": "lots"}, "limits", "must be an object"),
    ({"options": {"systemd": "yes"}}, "options", "systemd must be true or false"),
    ({"options": {"network_style": "../../x"}}, "options", "invalid network_style"),
    ({"options": {"ssh_keys": ["command=\"sh\" ssh-rsa AAAA"]}}, "options", "ssh key"),
    ({"options": {"ssh_keys": "ssh-ed25519 AAAA"}}, "options", "list of strings"),
    ({"options": {"timezone": "../../../etc/shadow"}}, "options", "invalid timezone"),
    ({"options": {"nameservers": ["dns.example.org"]}}, "options", "invalid address"),
    ({"options": {"passwd": {"user": "root", "hash": "s3cret"}}}, "options", "invalid password hash"),
    ({"options": {"passwd": {"user": "root\n", "hash": HASH}}}, "options", "invalid user name"),
    ({"options": {"passwd": {"user": "root", "hash": HASH + ":0:99999"}}}, "options", "invalid password hash"),
    ({"options": ["systemd"]}, "options", "must be an object"),
    ({"init": "/sbin/init"}, "init", "command line"),
    ({"init": []}, "init", "command line"),
    ({"init": ["sbin/init"]}, "init", "absolute path"),
    ({"init": ["/sbin/init\0"]}, "init", "command line"),
    ({"init": ["/../../../usr/bin/python3"]}, "init", "without '..'"),
    ({"init": ["/x"] * 65}, "init", "at most 64"),
    ({"stop_signal": "SIGNOPE"}, "stop_signal", "unknown stop_signal"),
    ({"stop_signal": 9}, "stop_signal", "unknown stop_signal"),
    ({"stop_signal": "SIGRTMIN+999"}, "stop_signal", "unknown stop_signal"),
    ({"nics": [{"network": "lan", "mode": "macvlan"}]}, "nics", "invalid mode"),
    ({"nics": [{"network": "lan", "rate": "fast"}]}, "nics", "invalid rate"),
    ({"nics": [{"network": "lan", "rate": -8}]}, "nics", "invalid rate"),
    ({"nics": [{"network": ["lan"]}]}, "nics", "network must be a network name"),
    ({"nics": ["lan"]}, "nics", "not an object"),
    ({"nics": [{"network": "lan"}] * 9}, "nics", "at most 8"),
    ({"hostname": "evil host;rm -rf"}, "hostname", "invalid hostname"),
    ({"hostname": "a" * 300}, "hostname", "invalid hostname"),
    ({"template": "../../templates/other"}, "template", "invalid template name"),
    ({"template": 7}, "template", "invalid template name"),
])
def test_every_tampered_field_is_refused_by_name(meta: dict, field: str, why: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        plan(meta)
    assert exc.value.message.startswith(f"backup header, {field}: "), exc.value.message
    assert why in exc.value.message, exc.value.message


@pytest.mark.parametrize("name", ["../../etc", "WEB", "100", "-web", "x" * 64, 5])
def test_a_bad_name_in_the_header_asks_for_another(name: Any) -> None:
    h = header()
    h["name"] = name
    with pytest.raises(InvalidRequest, match=r"backup header, name: invalid instance name.*--name NEW"):
        plan_restore(FakeManager(), h, {})  # type: ignore[arg-type]
    assert plan_restore(FakeManager(), h, {"name": "fine"}).name == "fine"  # type: ignore[arg-type]


def test_ignored_fields_are_named_and_do_not_arrive() -> None:
    p = plan({"id": 1, "idmap_base": 0, "type": "vm", "created_at": "x",
              "options": {"cgroup_fixed": {"memory": "ct-x"}, "vm": {"kernel": "/boot/evil"}, "zzz": 1}})
    ignored = next(n for n in p.notes if "header" in n)
    assert all(k in ignored for k in ("id", "idmap_base", "type", "created_at"))
    dropped = next(n for n in p.notes if "options" in n)
    assert all(k in dropped for k in ("cgroup_fixed", "vm", "zzz"))
    assert set(p.options.to_stored()) == {"systemd", "network_style", "ssh_keys", "timezone", "nameservers"}


def test_nics_keep_network_mode_and_rate_but_not_address_or_mac() -> None:
    p = plan({"nics": [{"network": "lan", "mode": "routed", "rate": "1mbit", "addresses": ["10.0.0.9"],
                        "mac": "02:00:00:00:00:09"},
                       {"network": "elsewhere"}, {"network": None, "mode": "routed"}]})
    assert [(n.network, n.mode, n.addresses, n.rate, n.filter) for n in p.nics] == \
        [("lan", NicMode.ROUTED, [], 1_000_000, True)]
    assert sum(n.startswith("NIC") for n in p.notes) == 2


def test_limits_given_at_restore_replace_the_files() -> None:
    p = plan({"limits": {"numproc": "abc", "cpus": 64, "ram": 1 << 30}},
             limits={"numproc": "50", "cpus": "1", "ram": "unlimited"})
    assert p.limits == {"numproc": 50, "cpus": 1}
    with pytest.raises(InvalidRequest, match="^invalid numproc 'x'"):  # the admin's own: no header prefix
        plan(limits={"numproc": "x"})
    assert plan({"limits": None}).limits == {}


def test_io_limits_need_a_block_device_as_at_create() -> None:
    h = header(limits={"iolimit": "10M"})
    with pytest.raises(InvalidRequest, match="need the storage pool on a block device"):
        plan_restore(FakeManager(io_device=None), h, {})  # type: ignore[arg-type]
    assert plan_restore(FakeManager(), h, {}).limits == {"iolimit": 10 << 20}  # type: ignore[arg-type]


def test_missing_init_comes_from_the_templates_recipe() -> None:
    h = header()
    del h["meta"]["init"], h["meta"]["stop_signal"]
    p = plan_restore(FakeManager(), h, {})  # type: ignore[arg-type]
    assert (p.init, p.stop_signal) == (["/sbin/init"], "SIGUSR2")
    h["meta"]["template"] = "gone"
    p = plan_restore(FakeManager(), h, {})  # type: ignore[arg-type]
    assert (p.init, p.stop_signal, p.template) == (["/sbin/init"], "SIGTERM", "gone")


def test_options_the_file_leaves_out_come_from_the_recipe() -> None:
    h = header(options={})
    assert plan_restore(FakeManager(), h, {}).options.network_style == "ip"  # type: ignore[arg-type]
    h["meta"]["template"] = "gone"
    assert plan_restore(FakeManager(), h, {}).options.to_stored() == {  # type: ignore[arg-type]
        "systemd": False, "network_style": "none", "ssh_keys": [], "timezone": None, "nameservers": []}


# ---------------------------------------------------------------- through the API


def backup_file(path: Path, h: dict) -> Path:
    """A backup whose header is h (its root member is empty: the check refuses before reading it)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("ctd-backup.json", json.dumps(h).encode()), ("rootfs.tar.zst", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_api_refuses_a_tampered_header_before_any_work(tmp_path: Path) -> None:
    manager = FakeManager()
    cases = {"numproc": header(limits={"numproc": "abc"}),
             "stop_signal": header(stop_signal="SIGNOPE"),
             "init": header(init="/bin/sh -c evil")}
    files = {k: backup_file(tmp_path / f"{k}.backup", h) for k, h in cases.items()}

    async def t(client: Any, env: Env) -> None:
        env.ctx.transfers = Transfers(manager)  # type: ignore[arg-type]
        for field, path in files.items():
            resp = await client.post("/1.0/restore", json={"file": str(path)})
            body = await error_of(resp, 400)
            assert field in body["error"] and body["error"].startswith("backup header"), body
        for body, status, why in (({"file": str(files["init"]), "privileged": "yes"}, 400, "privileged"),
                                  ({"file": str(files["init"]), "mac": "x"}, 400, "unknown field"),
                                  ({"file": str(files["init"]), "limits": {"ram": "-1"}}, 400, "invalid ram")):
            assert why in (await error_of(await client.post("/1.0/restore", json=body), status))["error"]
        assert env.ctx.operations.list() == []  # refused before an operation started
    serve(tmp_path, t)
    assert manager.reserved == []  # nothing was held for a restore that was refused


def test_reinstall_api_takes_restart(tmp_path: Path) -> None:
    seen: list[tuple] = []

    async def t(client: Any, env: Env) -> None:
        def check_reinstall(rec: Any, template: str, restart: bool) -> None:
            seen.append(("check", rec.name, template, restart))

        async def reinstall(rec: Any, template: str, restart: bool) -> dict:
            seen.append(("reinstall", rec.name, template, restart))
            return {"name": rec.name, "template": template, "notes": []}

        env.instances.check_reinstall = check_reinstall  # type: ignore[attr-defined]
        env.instances.reinstall = reinstall  # type: ignore[attr-defined]
        resp = await client.post("/1.0/instances/web/reinstall?wait=true", json={"restart": True})
        assert resp.status == 200, await resp.text()
        body = await error_of(await client.post("/1.0/instances/web/reinstall", json={"restart": "now"}), 400)
        assert "restart must be true or false" in body["error"]
    serve(tmp_path, t)
    assert seen == [("check", "web", "busybox", True), ("reinstall", "web", "busybox", True)]


def test_header_dict_is_not_modified_in_place() -> None:
    h = header()
    before = copy.deepcopy(h)
    plan_restore(FakeManager(), h, {"limits": {"numproc": "5"}})  # type: ignore[arg-type]
    assert h == before


def test_a_backup_carries_guest_settings_but_no_runtime_state() -> None:
    from ctd.state import InstanceRecord, InstanceType
    from ctd.state.options import InstanceOptions
    manager = SimpleNamespace(storage=None, db=SimpleNamespace(nics_of=lambda instance_id: []))
    rec = InstanceRecord(id=100, name="web", type=InstanceType.CONTAINER, template="busybox", hostname="web",
                         privileged=False, idmap_base=1 << 20, limits={"numproc": 100},
                         options=InstanceOptions.from_stored({
                             "systemd": True, "network_style": "networkd", "ssh_keys": [KEY],
                             "passwd": {"user": "root", "hash": HASH}, "cgroup_fixed": {"unified": "ct-standby-7"}}))
    meta = Transfers(manager).meta(rec)  # type: ignore[arg-type]
    assert meta["options"] == {"systemd": True, "network_style": "networkd", "ssh_keys": [KEY],
                               "timezone": None, "nameservers": [], "passwd": {"user": "root", "hash": HASH}}
    # and what it writes restores as it was
    p = plan_restore(FakeManager(), {"name": "web", "meta": meta}, {})  # type: ignore[arg-type]
    assert p.options.guest_stored()["passwd"] == meta["options"]["passwd"] and p.limits == {"numproc": 100}


def test_reinstall_refuses_a_vm_and_a_running_instance_without_restart() -> None:
    from ctd.errors import Conflict
    from ctd.state import InstanceRecord, InstanceType, PowerState
    ctx = SimpleNamespace(templates=SimpleNamespace(get=lambda name: name))
    manager = Provisioner(ctx, Kinds(ctx, None, lambda name, status: None))  # type: ignore[arg-type]
    vm = InstanceRecord(id=1, name="vm1", type=InstanceType.VM, template="busybox", hostname="vm1",
                        privileged=False, idmap_base=None)
    with pytest.raises(InvalidRequest, match="reinstall is for containers"):
        manager.check_reinstall(vm, "busybox")
    ct = InstanceRecord(id=2, name="web", type=InstanceType.CONTAINER, template="busybox", hostname="web",
                        privileged=False, idmap_base=1 << 20, state=PowerState.RUNNING)
    with pytest.raises(Conflict, match="--restart"):
        manager.check_reinstall(ct, "busybox")
    manager.check_reinstall(ct, "busybox", restart=True)
