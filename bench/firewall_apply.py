"""How long writing an instance's firewall into the kernel takes (the nft transaction ctd runs when
a rule is added or deleted, the firewall is switched on, or the instance starts), by number of
rules, in a network namespace of its own (nothing of the host's is touched).

    sudo /work/main/.venv/bin/python bench/firewall_apply.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time

from ctd.network import nft
from ctd.network.firewall import FirewallRule, NicFirewall, Settings

CLONE_NEWNET = 0x40000000


def nic(rules: int, bridged: bool = True) -> NicFirewall:
    made = tuple(FirewallRule(i + 1, 7, "in" if i % 2 else "out", "tcp", 1000 + i, 1000 + i,
                              f"10.{i % 250}.0.0/16", None, "accept") for i in range(rules))
    return NicFirewall("bx7.0", bridged, 7, Settings(True, "drop", "accept"), made)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
        raise SystemExit(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())} (run as root)")
    filters = nft.Filters("bench_fw")
    filters.apply({}, {})
    print(f"{'rules':>6} {'enable (ms)':>12} {'add one rule (ms)':>18} {'disable (ms)':>13}")
    for count in (0, 10, 50, 200):
        enable, add, disable = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            filters.apply({}, {"bx7.0": nic(count)})
            t1 = time.perf_counter()
            filters.apply({}, {"bx7.0": nic(count + 1)})
            t2 = time.perf_counter()
            filters.apply({}, {})
            t3 = time.perf_counter()
            enable.append(t1 - t0)
            add.append(t2 - t1)
            disable.append(t3 - t2)
        print(f"{count:>6} {statistics.median(enable) * 1e3:>12.2f} {statistics.median(add) * 1e3:>18.2f} "
              f"{statistics.median(disable) * 1e3:>13.2f}")
    filters.remove()


if __name__ == "__main__":
    main()
