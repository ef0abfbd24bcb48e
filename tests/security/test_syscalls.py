"""Kernel interfaces that are not namespaced: refused by the seccomp filter, in both kinds of
container (privileged ones keep the filter and the capability drops)."""

from __future__ import annotations

import time

import pytest

from tests.security.conftest import probe

DENIED = [
    # shocker: open_by_handle_at with the handle of inode 2 -- the root directory of the
    # filesystem the container's root lives on, i.e. a way out of any chroot or pivot_root
    "open_by_handle_at",
    "keyctl", "add_key", "request_key",       # the kernel keyring is not namespaced
    "bpf",                                      # host-wide tracing, verifier bugs
    "userfaultfd",                              # widens kernel race windows for exploits
    "perf_event_open",                          # host-wide profiling, side channels
    "kexec_load", "kexec_file_load",            # replace the running kernel
    "settime", "settimeofday", "adjtimex",      # the clock is the host's
    "io_uring_setup", "io_uring_enter", "io_uring_register",  # off by default, as in Docker
]


@pytest.mark.parametrize("call", DENIED)
def test_non_namespaced_syscalls_are_refused(ctd, make, privileged, call):
    name = make(privileged)
    assert probe(ctd, name, call) == "EPERM"


def test_clock_is_unchanged(ctd, make, privileged):
    """`date -s` (settimeofday to the current time: harmless had it worked) fails; the clock
    inside is the host's and keeps agreeing with it."""
    name = make(privileged)
    r = ctd.sh(name, "date -s \"$(date '+%Y-%m-%d %H:%M:%S')\" 2>&1")
    assert "can't set date: Operation not permitted" in r.out, r.out  # busybox exits 0 anyway
    inside = int(ctd.sh(name, "date +%s").out)
    assert abs(inside - time.time()) < 5
    # and no hardware clock to set either: /dev/rtc* is not in the container's /dev
    assert probe(ctd, name, "openw", "/dev/rtc0") == "ENOENT"



def _io_uring_from_init(ctd, make_container, privileged: bool, **options) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(what a child of the container's init got, what an exec'd process got) from io_uring_setup.
    init's children inherit the filter installed when the init was made (ahead, as a standby,
    or at the start); exec'd processes get the exec helper's."""
    name = make_container(start=False, **({"privileged": True} if privileged else {}), **options)
    inittab = ctd.rootfs(name) / "etc/inittab"
    inittab.write_text(inittab.read_text() + "::once:/bin/sh -c '/usr/local/bin/probe io_uring_setup > /init-probe'\n")
    ctd.ok("start", name)
    out = ctd.rootfs(name) / "init-probe"
    deadline = time.monotonic() + 10
    while not (out.exists() and out.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return out.read_text().strip(), probe(ctd, name, "io_uring_setup")


def test_io_uring_is_denied_to_init_and_exec(ctd, make_container, privileged):
    assert _io_uring_from_init(ctd, make_container, privileged) == ("EPERM", "EPERM")


def test_io_uring_when_allowed(ctd, make_container, privileged):
    """--allow-io-uring lifts that one denial, in init's processes (its init is made at the
    start, not taken from the standbys made ahead with the default filter) and in exec'd ones."""
    assert _io_uring_from_init(ctd, make_container, privileged, **{"allow-io-uring": True}) == ("ok", "ok")
