"""The remote API's cost: GET /1.0/instances over HTTPS (keep-alive, token) next to the unix
socket, with N concurrent clients, and the cost of a fresh TLS handshake.

    sudo /work/main/.venv/bin/python bench/https_part.py [--clients 100] [--seconds 10] [--handshakes 200]

A private ctd (dir storage, own state dir and cgroup name) with 10 stopped busybox containers,
so the list has something to say. The clients run in this process (one event loop), the
daemon in its own: on a 2-core machine they compete for CPU the same way on both transports.
Target (issue 17): HTTPS p99 within 1.5x of the socket's. ctd's CPU time per request is shown
too: unlike latency, it hardly depends on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from ctd_side import CtdDaemon, https_daemon

INSTANCES = 10


def summary(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    if not s:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    pick = lambda p: round(s[min(len(s) - 1, int(p / 100 * len(s)))], 2)
    return {"n": len(s), "p50_ms": pick(50), "p99_ms": pick(99), "max_ms": round(s[-1], 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(session: aiohttp.ClientSession, url: str, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            async with session.get(url) as response:
                body = await response.read()
                if response.status != 200 or len(json.loads(body)["instances"]) != INSTANCES:
                    errors += 1
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    return {"requests_per_s": round(len(latencies) / elapsed, 1), "errors": errors, **summary(latencies)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (ctd's: what a request costs it, whatever else runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_load(ctd: CtdDaemon, session: aiohttp.ClientSession, url: str, clients: int, seconds: float) -> dict:
    before = cpu_seconds(ctd.pid)
    result = await load(session, url, clients, seconds)
    spent = cpu_seconds(ctd.pid) - before
    result["ctd_cpu_ms_per_request"] = round(spent * 1000 / max(1, result["n"]), 3)
    return result


async def measure(ctd: CtdDaemon, port: int, token: str, fingerprint: str, clients: int, seconds: float) -> dict:
    unix = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(ctd.socket), limit=clients))
    tls = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients,
                                                               ssl=aiohttp.Fingerprint(bytes.fromhex(fingerprint))),
                                headers={"Authorization": f"Bearer {token}"})
    try:
        await load(unix, "http://localhost/1.0/instances", clients, 1.0)  # warm-up: connections made
        socket_result = await timed_load(ctd, unix, "http://localhost/1.0/instances", clients, seconds)
        await load(tls, f"https://127.0.0.1:{port}/1.0/instances", clients, 1.0)
        https_result = await timed_load(ctd, tls, f"https://127.0.0.1:{port}/1.0/instances", clients, seconds)
    finally:
        await unix.close()
        await tls.close()
    return {"socket": socket_result, "https": https_result}


def handshakes(port: int, count: int) -> dict:
    """A fresh TCP connection + TLS handshake, one at a time (what a client without keep-alive pays)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw):
            samples.append((time.perf_counter() - t0) * 1000)
    return summary(samples)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--handshakes", type=int, default=200)
    p.add_argument("--output", type=Path)
    args = p.parse_args()
    port = free_port()
    with https_daemon("ctd-bench-https-", port) as (ctd, errors):
        for i in range(INSTANCES):
            ctd.create(f"bench-https-{i}")
        token = ctd.client.request("POST", "/1.0/tokens", {"name": "bench"})["token"]["secret"]
        fingerprint = ctd.client.get("/1.0")["https"]["certificate_fingerprint"]
        result = asyncio.run(measure(ctd, port, token, fingerprint, args.clients, args.seconds))
        result["tls_handshake"] = handshakes(port, args.handshakes)
    result["clients"] = args.clients
    ratio = result["https"]["p99_ms"] / result["socket"]["p99_ms"] if result["socket"]["p99_ms"] else None
    result["p99_ratio"] = round(ratio, 2) if ratio else None
    print(json.dumps(result, indent=2))
    print(f"GET /1.0/instances, {args.clients} keep-alive clients: socket {result['socket']['requests_per_s']}/s "
          f"p99 {result['socket']['p99_ms']} ms; HTTPS {result['https']['requests_per_s']}/s "
          f"p99 {result['https']['p99_ms']} ms (x{result['p99_ratio']}, target <= 1.5); ctd CPU per request "
          f"{result['socket']['ctd_cpu_ms_per_request']} ms vs {result['https']['ctd_cpu_ms_per_request']} ms; "
          f"TLS handshake p50 {result['tls_handshake']['p50_ms']} ms", file=sys.stderr)
    return finish(result, args.output, errors)


def finish(result: dict, output: Path | None, errors: list[str]) -> int:
    """The result to --output when given, cleanup errors to stderr; the exit status."""
    if output:
        output.write_text(json.dumps(result, indent=2))
    for error in errors:
        print(f"cleanup: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
