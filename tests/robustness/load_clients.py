"""N concurrent API clients doing list and status for S seconds; prints a JSON summary.

    python -m tests.robustness.load_clients SOCKET CLIENTS SECONDS

Runs in its own process so that its CPU use does not stall the test's own threads. A status
of an instance that was destroyed between the list and the status (404) is counted as
'gone', not as an error: the list it came from was right when it was made.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import aiohttp


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(values: list[float]) -> dict:
    return {"count": len(values), "p50_ms": _ms(percentile(values, 50)), "p99_ms": _ms(percentile(values, 99)),
            "max_ms": _ms(max(values) if values else None)}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


async def main(socket_path: str, clients: int, seconds: float) -> dict:
    lists: list[float] = []
    statuses: list[float] = []
    errors: list[str] = []
    gone = 0
    names: list[str] = []
    deadline = time.monotonic() + seconds
    connector = aiohttp.UnixConnector(path=socket_path, limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(n: int) -> None:
            nonlocal gone, names
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.get("http://ctd/1.0/instances") as r:
                        body = await r.json()
                        if r.status != 200:
                            errors.append(f"list: HTTP {r.status} {body}")
                            continue
                    lists.append(time.perf_counter() - t0)
                    names = [i["name"] for i in body["instances"]] or names
                    if not names:
                        continue
                    name = random.choice(names)
                    t0 = time.perf_counter()
                    async with session.get(f"http://ctd/1.0/instances/{name}") as r:
                        body = await r.json()
                        if r.status == 404:
                            gone += 1
                        elif r.status != 200:
                            errors.append(f"status {name}: HTTP {r.status} {body}")
                        else:
                            statuses.append(time.perf_counter() - t0)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        started = time.monotonic()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.monotonic() - started
    return {"clients": clients, "seconds": round(elapsed, 1), "list": summary(lists), "status": summary(statuses),
            "status_of_destroyed": gone, "errors": errors[:20], "error_count": len(errors),
            "requests_per_second": round((len(lists) + len(statuses) + gone) / elapsed, 1)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))))
