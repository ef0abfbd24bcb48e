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
