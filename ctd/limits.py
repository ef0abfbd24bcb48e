"""User-facing limits (vzctl names and forms) -> normalised values -> cgroups.Resources."""

from __future__ import annotations

from typing import Any

from cgroups import Resources, parse_size

from ctd.errors import InvalidRequest

# name -> one-line help shown in errors and the API schema.
LIMITS: dict[str, str] = {
    "ram": "memory limit, e.g. 512M or 1G; OpenVZ's barrier:limit form sets the soft and hard limit",
    "cpus": "number of CPUs the container may run on (a cpuset), 1 up to the host's count",
    "numproc": "maximum number of processes and threads, e.g. 100 or 90:100",
}


def _count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool):
        raise InvalidRequest(f"{name}: expected a whole number, got {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise InvalidRequest(f"invalid {name} {value!r}: expected a whole number") from None
    if number < minimum:
        raise InvalidRequest(f"invalid {name} {value!r}: must be at least {minimum}")
    return number


def _size(name: str, value: Any) -> int:
    try:
        size = parse_size(str(value))
    except ValueError as exc:
        raise InvalidRequest(f"invalid {name} {value!r}: {exc}") from None
    if size <= 0:
        raise InvalidRequest(f"invalid {name} {value!r}: must be more than zero")
    return size


def _barrier_limit(value: Any) -> tuple[str, str]:
    text = str(value).strip()
    if ":" in text:
        barrier, limit = text.split(":", 1)
        return barrier, limit
    return text, text


def normalise(raw: dict[str, Any], host_cpus: int) -> dict[str, int]:
    """Validate user input; returns {"ram": bytes, "ram_high": bytes, "cpus": n, "numproc": n}."""
    if not isinstance(raw, dict):
        raise InvalidRequest("limits must be an object like {\"ram\": \"512M\"}")
    unknown = sorted(set(raw) - set(LIMITS))
    if unknown:
        raise InvalidRequest(f"unknown limit(s) {', '.join(unknown)}; known: {', '.join(LIMITS)}")
    out: dict[str, int] = {}
    if raw.get("ram") is not None:
        barrier, limit = _barrier_limit(raw["ram"])
        out["ram"] = _size("ram", limit)
        if barrier != limit:
            high = _size("ram barrier", barrier)
            if high > out["ram"]:
                raise InvalidRequest(f"invalid ram {raw['ram']!r}: the barrier must not exceed the limit")
            out["ram_high"] = high
        if out["ram"] < 4 * 1024 * 1024:
            raise InvalidRequest(f"invalid ram {raw['ram']!r}: at least 4M is needed to run anything")
    if raw.get("cpus") is not None:
        cpus = _count("cpus", raw["cpus"])
        if cpus > host_cpus:
            raise InvalidRequest(f"invalid cpus {cpus}: this host has only {host_cpus} CPU(s)")
        out["cpus"] = cpus
    if raw.get("numproc") is not None:
        barrier, limit = _barrier_limit(raw["numproc"])
        out["numproc"] = _count("numproc", limit)
        if _count("numproc barrier", barrier) > out["numproc"]:
            raise InvalidRequest(f"invalid numproc {raw['numproc']!r}: the barrier must not exceed the limit")
    return out


def pick_cpus(count: int, host_cpus: list[int], seed: int) -> str:
    """count CPUs, starting at a per-container offset so containers spread over the host."""
    start = seed % len(host_cpus)
    chosen = sorted((host_cpus * 2)[start:start + count])
    return ",".join(str(c) for c in chosen)


def to_resources(limits: dict[str, int], host_cpus: list[int], seed: int) -> Resources:
    return Resources(
        memory_max=limits.get("ram"),
        memory_high=limits.get("ram_high"),
        cpuset=pick_cpus(limits["cpus"], host_cpus, seed) if "cpus" in limits else None,
        pids_max=limits.get("numproc"),
    )


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("T", "G", "M", "K"):
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)
