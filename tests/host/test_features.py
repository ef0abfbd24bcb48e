"""Container features (ctd/instance/container/features.py): tun carries a tunnel's packets
between two containers, fuse mounts a FUSE filesystem inside; without them neither device is
there; bad input, VMs, tenants, restore and clone.

Traffic flows only between containers on a bridge the test made.
"""

from __future__ import annotations

import subprocess
import threading

import pytest

from tests.helpers.net import own_network


@pytest.fixture(autouse=True)
def host_has_the_devices(ctd):
    """A host without /dev/net/tun or /dev/fuse (a kernel built without them) must refuse the
    feature naming the kernel option: that is what is tested there instead."""
    from ctd.errors import InvalidRequest
    from ctd.instance.container import features
    try:
        features.host_lacks(("tun", "fuse"))
    except InvalidRequest as exc:
        r = ctd.ctl("create", ctd.unique("tfn"), "--template", "busybox", "--features", "tun,fuse")
        assert r.code != 0 and "CONFIG_" in r.err, r.err
        pytest.skip(f"this host cannot give the features ({exc.message}); its refusal was checked instead")


@pytest.fixture
def net(ctd):
    with own_network(ctd, "tf") as network:
        yield network


def _address(ctd, name: str) -> str:
    return ctd.instance(name)["nics"][0]["addresses"][0]


# One tunnel end: the relay makes tun0, the shell gives it an address (point to point) once it
# exists. The relay runs inside the same exec as what uses it (a background job left behind by
# an exec that returned is not something to lean on).
TUNNEL_END = ("probe tunrelay tun0 {peer} 7777 {seconds} > /tmp/relay.log 2>&1 & relay=$!; "
              "for i in $(seq 100); do ip link show tun0 >/dev/null 2>&1 && break; sleep 0.1; done; "
              "ip addr add {me} peer {other} dev tun0 && ip link set tun0 up || exit 3; ")


def test_tun_carries_a_tunnel_between_two_containers(ctd, make_container, net):
    a = make_container(net=net["name"], features="tun")
    b = make_container(net=net["name"], features="tun")
    assert ctd.instance(a)["features"] == ["tun"]
    ip_a, ip_b = _address(ctd, a), _address(ctd, b)
    far: list = []
    end_b = TUNNEL_END.format(peer=ip_a, seconds=40, me="10.222.0.2", other="10.222.0.1") + "wait $relay"
    thread = threading.Thread(target=lambda: far.append(ctd.sh(b, end_b, timeout=60)))
    thread.start()
    try:
        end_a = (TUNNEL_END.format(peer=ip_b, seconds=40, me="10.222.0.1", other="10.222.0.2")
                 + "for i in $(seq 30); do ping -c1 -W1 10.222.0.2 >/dev/null && break; done; "
                 + "ping -c3 -W2 10.222.0.2; r=$?; cat /sys/class/net/tun0/statistics/tx_packets; kill $relay; exit $r")
        near = ctd.sh(a, end_a, timeout=60)
    finally:
        ctd.sh(b, "kill $(pidof probe) 2>/dev/null; true")
        thread.join(60)
    assert near.code == 0, f"no answer through the tunnel: {near.out}{near.err}"
    assert "3 packets received" in near.out or "3 received" in near.out
    assert int(near.out.strip().splitlines()[-1]) >= 3      # the echo requests went into the tunnel
    assert far and far[0].code in (0, 143), far[0].err      # b's end ran until it was ended


def test_fuse_mounts_a_filesystem_inside_and_the_host_does_not_see_it(ctd, make_container):
    name = make_container(features="fuse")
    r = ctd.sh(name, "mkdir -p /mnt/f; probe fuse-hello /mnt/f 30 & "
                     "for i in $(seq 50); do grep -q ' /mnt/f ' /proc/mounts && break; sleep 0.1; done; "
                     "cat /mnt/f/hello; grep ' /mnt/f ' /proc/mounts; "
                     "umount /mnt/f; wait", timeout=60)
    assert r.code == 0, r.err
    assert "hello from fuse" in r.out
    assert "fuse.probe" in r.out and "nosuid" in r.out and "nodev" in r.out
    host_mounts = subprocess.run(["findmnt", "-rn", "-t", "fuse.probe"], capture_output=True, text=True).stdout
    assert host_mounts == ""


def test_without_features_neither_device_is_there_nor_opens(ctd, make_container):
    name = make_container()
    assert ctd.instance(name)["features"] == []
    assert ctd.ctl("exec", name, "--", "probe", "tun-open").out.strip() == "ENOENT"
    assert ctd.ctl("exec", name, "--", "probe", "fuse-open").out.strip() == "ENOENT"
    # tun alone gives tun, not fuse
    tun_only = make_container(features="tun")
    assert ctd.ctl("exec", tun_only, "--", "probe", "tun-open").out.strip() == "ok"
    assert ctd.ctl("exec", tun_only, "--", "probe", "fuse-open").out.strip() == "ENOENT"


def test_set_changes_features_at_the_next_start(ctd, make_container):
    name = make_container()
    said = ctd.ok("set", name, "--features", "tun,fuse")
    assert "features fuse, tun" in said and "apply at the next start" in said
    assert ctd.ctl("exec", name, "--", "probe", "tun-open").out.strip() == "ENOENT"   # not yet
    ctd.ok("restart", name, "--timeout", "5")
    assert ctd.ctl("exec", name, "--", "probe", "tun-open").out.strip() == "ok"
    assert ctd.ctl("exec", name, "--", "probe", "fuse-open").out.strip() == "ok"
    assert "features:    fuse, tun" in ctd.ok("status", name)
    ctd.ok("set", name, "--features", "")
    ctd.ok("restart", name, "--timeout", "5")
    assert ctd.ctl("exec", name, "--", "probe", "tun-open").out.strip() == "ENOENT"
    assert "features:    none" in ctd.ok("status", name)


def test_bad_features_are_refused_and_change_nothing(ctd, make_container):
    name = ctd.unique("tfb")
    r = ctd.ctl("create", name, "--template", "busybox", "--features", "tun,kvm")
    assert r.code != 0 and "unknown feature(s) 'kvm'" in r.err and "known features are fuse, tun" in r.err
    assert ctd.ctl("status", name).code != 0          # nothing made
    made = make_container(start=False, features="tun")
    r = ctd.ctl("set", made, "--features", "nesting")
    assert r.code != 0 and "unknown feature" in r.err
    assert ctd.instance(made)["features"] == ["tun"]


def test_restore_starts_without_features_and_a_clone_keeps_them(ctd, make_container, tmp_path):
    name = make_container(start=False, features="tun,fuse")
    out = tmp_path / "f.tar"
    ctd.ok("backup", name, str(out), "--tar")
    restored = ctd.unique("tfr")
    ctd.ok("restore", str(out), "--name", restored)
    try:
        assert ctd.instance(restored)["features"] == []    # a backup never grants devices
    finally:
        ctd.ctl("destroy", "--force", restored)
    clone = ctd.unique("tfc")
    ctd.ok("clone", name, clone)
    try:
        assert ctd.instance(clone)["features"] == ["fuse", "tun"]
    finally:
        ctd.ctl("destroy", "--force", clone)
