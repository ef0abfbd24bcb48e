"""(net) Networking: iperf3 TCP throughput over ctd's bridge next to the host's loopback, and what one
bridged NIC adds to a container's start.

Only traffic between the host and namespaces of containers this run made (through the bridge
this run made), and on the host's loopback: every iperf3 runs the host's binary, the servers bound
to one address, the ones "in" a container entered into its network namespace only
(`nsenter --net=/proc/<init>/ns/net`), so nothing of the container's filesystem runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import time

from common import BenchError, ratio, read_text, summary
from ctd_side import CtdDaemon


def ensure_iperf3() -> None:
    if shutil.which("iperf3"):
        return
    print("installing iperf3: apt-get install -y iperf3", flush=True)
    r = subprocess.run(["apt-get", "install", "-y", "iperf3"], stdin=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if r.returncode != 0 or not shutil.which("iperf3"):
        raise BenchError("apt-get install -y iperf3 failed")


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 (the loopback server's; the namespaces have all
    ports to themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Iperf:
    """iperf3 servers and clients this run started; every one is our child and is killed by pid
    in cleanup()."""

    def __init__(self, port: int, seconds: float) -> None:
        self.port = port
        self.seconds = seconds
        self.procs: list[subprocess.Popen] = []

    @staticmethod
    def _in(netns_pid: int | None) -> list[str]:
        return ["nsenter", f"--net=/proc/{netns_pid}/ns/net"] if netns_pid else []

    def server(self, address: str, netns_pid: int | None) -> subprocess.Popen:
        """`iperf3 -s -1` bound to address (in that netns), once it listens."""
        proc = subprocess.Popen(self._in(netns_pid) + ["iperf3", "-s", "-1", "--forceflush", "-B", address,
                                                     "-p", str(self.port)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        seen = b""
        deadline = time.monotonic() + 10
        while b"listening" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                self.kill(proc)
                raise BenchError(f"iperf3 server on {address} did not start: {seen.decode(errors='replace')[-300:]}")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)  # type: ignore[union-attr]
                if not chunk:
                    continue
                seen += chunk
        return proc

    def transfer(self, server_addr: str, server_ns: int | None, client_ns: int | None, reverse: bool = False) -> float:
        """One iperf3 TCP test; returns the receiver's throughput in Gbit/s."""
        srv = self.server(server_addr, server_ns)
        try:
            argv = self._in(client_ns) + ["iperf3", "-c", server_addr, "-p", str(self.port), "-t", f"{self.seconds:g}",
                                          "-J"] + (["-R"] if reverse else [])
            client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)
            self.procs.append(client)
            try:
                out, err = client.communicate(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                self.kill(client)
                raise BenchError(f"iperf3 -c {server_addr} did not finish") from None
            self.procs.remove(client)
            try:
                data = json.loads(out)
            except json.JSONDecodeError:
                raise BenchError(f"iperf3 -c {server_addr}: {err.strip() or out[-300:]}") from None
            if "error" in data:
                raise BenchError(f"iperf3 -c {server_addr}: {data['error']}")
            return data["end"]["sum_received"]["bits_per_second"] / 1e9
        finally:
            try:
                srv.wait(5)
            except subprocess.TimeoutExpired:
                self.kill(srv)
            with contextlib.suppress(ValueError):
                self.procs.remove(srv)
            if srv.stdout:
                srv.stdout.close()

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def cleanup(self) -> list[str]:
        for proc in list(self.procs):
            self.kill(proc)
        return []


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def bench_net(ctd: CtdDaemon, iperf: Iperf, tag: str, starts: int, rounds: int, log) -> dict:  # type: ignore[no-untyped-def]
    net_name = f"ctdb-{tag}"
    net = ctd.create_network(net_name)
    log(f"  network {net_name}: bridge {net['bridge']}, subnet {net['subnet']}")
    a, b, u, bare = "bench-net-a", "bench-net-b", "bench-net-u", "bench-net-0"
    # the same over a network with the largest MTU (a private bridge has no wire to match)
    jumbo_name, ja, jb = f"ctdj-{tag}", "bench-net-ja", "bench-net-jb"
    ctd.create_network(jumbo_name, mtu=65535)
    ctd.create(ja, nics=[{"network": jumbo_name}])
    ctd.create(jb, nics=[{"network": jumbo_name}])
    ctd.create(a, nics=[{"network": net_name}])
    ctd.create(b, nics=[{"network": net_name}])
    ctd.create(u, nics=[{"network": net_name, "filter": False}])
    ctd.create(bare)
    out: dict = {"network": net, "iperf3_seconds": iperf.seconds, "rounds": rounds}

    # (c) start with one NIC vs none: interleaved, order alternating; stop (kill) untimed but
    # timed too, since it tears the NIC down.
    log(f"  start with one NIC vs none: 3 warm-up + {starts} starts each")
    samples: dict[str, dict[str, list[float]]] = {k: {"start": [], "stop": []} for k in ("none", "nic")}
    for i in range(3 + starts):
        order = [("none", bare), ("nic", a)] if i % 2 == 0 else [("nic", a), ("none", bare)]
        for key, name in order:
            t0 = time.perf_counter()
            ctd.start_ct(name)
            start_ms = _ms(t0)
            t0 = time.perf_counter()
            ctd.stop_ct(name)
            stop_ms = _ms(t0)
            if i >= 3:
                samples[key]["start"].append(start_ms)
                samples[key]["stop"].append(stop_ms)
    out["start"] = {k: {step: {**summary(v), "samples_ms": [round(x, 3) for x in v]} for step, v in s.items()}
                    for k, s in samples.items()}

    # (a), (b) throughput
    for name in (a, b, u, ja, jb):
        ctd.start_ct(name)
    pid = {n: ctd.init_pid(n) for n in (a, b, u, ja, jb)}
    addr = {n: ctd.instance(n)["nics"][0]["addresses"][0] for n in (a, b, u, ja, jb)}
    gateway = net["gateway"]
    # A second reference: loopback at the bridge's MTU (1500; the host's lo has 65536, which alone
    # makes it much faster), on the lo of the unfiltered container's own network namespace.
    mtu = int(read_text(f"/sys/class/net/{net['bridge']}/mtu") or 1500)
    r = subprocess.run(["nsenter", f"--net=/proc/{pid[u]}/ns/net", "ip", "link", "set", "lo", "mtu", str(mtu)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"setting lo's MTU in {u}: {r.stderr.strip()}")
    out["bridge_mtu"] = mtu
    bridge_nf = read_text("/proc/sys/net/bridge/bridge-nf-call-iptables") == "1"
    out["br_netfilter"] = bridge_nf
    tests = {
        "loopback": lambda: iperf.transfer("127.0.0.1", None, None),
        "loopback_mtu": lambda: iperf.transfer("127.0.0.1", pid[u], pid[u]),
        "host_to_ct": lambda: iperf.transfer(addr[a], pid[a], None),
        "ct_to_host": lambda: iperf.transfer(addr[a], pid[a], None, reverse=True),
        "ct_to_ct": lambda: iperf.transfer(addr[a], pid[a], pid[b]),
        "host_to_ct_nofilter": lambda: iperf.transfer(addr[u], pid[u], None),
        "host_to_ct_jumbo": lambda: iperf.transfer(addr[ja], pid[ja], None),
        "ct_to_host_jumbo": lambda: iperf.transfer(addr[ja], pid[ja], None, reverse=True),
        "ct_to_ct_jumbo": lambda: iperf.transfer(addr[ja], pid[ja], pid[jb]),
    }
    gbit: dict[str, list[float]] = {k: [] for k in tests}
    keys = list(tests)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            gbit[k].append(tests[k]())
        log(f"  throughput round {r + 1}/{rounds}: " + ", ".join(f"{k} {gbit[k][-1]:.1f}" for k in keys) + " Gbit/s")
    for name in (a, b, u, ja, jb):
        ctd.stop_ct(name)
    out["gateway"] = gateway
    out["throughput_gbit"] = {k: {"median": statistics.median(v), "samples": [round(x, 3) for x in v]}
                              for k, v in gbit.items()}
    for name in (a, b, u, bare, ja, jb):
        ctd.destroy(name)
    ctd.delete_network(net_name)
    ctd.delete_network(jumbo_name)
    return out


LABELS = {
    "loopback": "loopback on the host (127.0.0.1)",
    "loopback_mtu": "loopback at the bridge's MTU (in a netns)",
    "host_to_ct": "host -> container (over the bridge)",
    "ct_to_host": "container -> host (iperf3 -R)",
    "ct_to_ct": "container -> container (same bridge)",
    "host_to_ct_nofilter": "host -> container, anti-spoofing off",
    "host_to_ct_jumbo": "host -> container, network --mtu 65535",
    "ct_to_host_jumbo": "container -> host, network --mtu 65535",
    "ct_to_ct_jumbo": "container -> container, --mtu 65535",
}


def report(n: dict, verdicts: list[str]) -> list[str]:
    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    lines = ["", f"(net) TCP throughput, iperf3 -t {n['iperf3_seconds']:g} (host's binary; servers entered into the "
                 f"containers' netns), median of {n['rounds']} round(s), Gbit/s"]
    lines.append(f"  {'':42} {'Gbit/s':>8} {'/loopback':>10} {'/lo at MTU':>11}")
    t = n["throughput_gbit"]
    lo = t["loopback"]["median"]
    lo_mtu = t.get("loopback_mtu", {}).get("median")
    for k, label in LABELS.items():
        if k not in t:
            continue
        lines.append(f"  {label:42} {f(t[k]['median'], 2):>8} {f(ratio(t[k]['median'], lo), 2) + 'x':>10} "
                     f"{f(ratio(t[k]['median'], lo_mtu), 2) + 'x':>11}")
    lines.append(f"  (bridge {n['network']['bridge']}, {n['network']['subnet']}, MTU {n.get('bridge_mtu', '?')}; "
                 f"the host's lo: MTU {read_text('/sys/class/net/lo/mtu')}; bridge-nf-call-iptables "
                 f"{'on: bridged traffic also passes the iptables hooks' if n['br_netfilter'] else 'off'})")
    for k in ("host_to_ct", "ct_to_host", "ct_to_ct", "host_to_ct_jumbo", "ct_to_host_jumbo", "ct_to_ct_jumbo"):
        if k not in t:
            continue
        r = ratio(t[k]["median"], lo) or 0.0
        verdicts.append(f"net {LABELS[k].split(' (')[0]}: {r:.2f}x loopback -> {'PASS' if r >= 0.8 else 'FAIL'} "
                        f"(target >= 0.8)")
    s = n["start"]
    lines.append("")
    lines.append(f"(net) start with one bridged NIC vs without, ms ({s['nic']['start']['n']} starts each, interleaved)")
    lines.append(f"  {'':28} {'mean':>7} {'median':>7} {'p90':>7} {'stop med':>9}")
    for k, label in (("none", "no NIC"), ("nic", "one bridged NIC (filtered)")):
        v = s[k]["start"]
        lines.append(f"  {label:28} {f(v['mean']):>7} {f(v['median']):>7} {f(v['p90']):>7} "
                     f"{f(s[k]['stop']['median']):>9}")
    added = s["nic"]["start"]["median"] - s["none"]["start"]["median"]
    lines.append(f"  added by the NIC: start {added:+.1f} ms, stop "
                 f"{s['nic']['stop']['median'] - s['none']['stop']['median']:+.1f} ms (medians)")
    verdicts.append(f"net start cost of one NIC: {added:+.1f} ms -> {'PASS' if added < 10 else 'FAIL'} (target < 10 ms)")
    return lines
