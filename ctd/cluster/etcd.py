"""What ctd needs of etcd v3, over etcd's JSON gateway (/v3/...) with aiohttp.

Why the gateway and not a client library: see docs/architecture.md ("Cluster"). The gateway is
the gRPC API with protobuf's JSON mapping: keys and values are base64, 64-bit integers are
strings, and fields at their zero value are left out (no "kvs" for an empty range, no
"succeeded" for a failed transaction), so every read here has a default.

Only this module speaks etcd's wire format; the rest of ctd/cluster sees `KeyValue`, `Compare`
and `TxnResult`. Endpoints are tried in order: a member that cannot be reached is skipped (an
etcd cluster of 3 or 5 answers through any of its members).
"""

from __future__ import annotations

import base64
import enum
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from ctd.errors import OperationFailed, Unavailable

log = logging.getLogger("ctd.cluster")

TIMEOUT = 5.0   # one request to one member; etcd answers in milliseconds unless it has no leader


class EtcdUnavailable(Unavailable):
    """No endpoint answered (or none has a leader): the cluster's store is out of reach."""


class EtcdError(OperationFailed):
    """etcd answered with an error (a lease that is gone, a request it refused)."""


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> bytes:
    """The range end that covers every key starting with `prefix` (etcd's own rule: the last
    byte plus one; a prefix of 0xff bytes only: every key to the end, "\0")."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    def json(self) -> Any:
        return json.loads(self.value)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> KeyValue:
        return cls(key=_unb64(raw["key"]).decode(), value=_unb64(raw.get("value", "")),
                   create_revision=int(raw.get("create_revision", 0)), mod_revision=int(raw.get("mod_revision", 0)),
                   lease=int(raw.get("lease", 0)))


class Target(enum.Enum):
    VALUE = "VALUE"
    CREATE = "CREATE"   # create_revision: 0 when the key does not exist
    MOD = "MOD"


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: `key`'s target EQUAL/NOT_EQUAL/GREATER/LESS `than`."""

    key: str
    target: Target
    result: str
    than: int | bytes

    @classmethod
    def missing(cls, key: str) -> Compare:
        return cls(key, Target.CREATE, "EQUAL", 0)

    @classmethod
    def exists(cls, key: str) -> Compare:
        return cls(key, Target.CREATE, "GREATER", 0)

    @classmethod
    def value_is(cls, key: str, value: bytes) -> Compare:
        return cls(key, Target.VALUE, "EQUAL", value)

    @classmethod
    def unchanged(cls, key: str, mod_revision: int) -> Compare:
        return cls(key, Target.MOD, "EQUAL", mod_revision)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": _b64(self.key), "target": self.target.value, "result": self.result}
        if self.target is Target.VALUE:
            out["value"] = _b64(self.than if isinstance(self.than, bytes) else str(self.than).encode())
        elif self.target is Target.CREATE:
            out["create_revision"] = str(self.than)
        else:
            out["mod_revision"] = str(self.than)
        return out


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return {"request_put": body}


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False

    def wire(self) -> dict[str, Any]:
        body = {"key": _b64(self.key)}
        if self.prefix:
            body["range_end"] = _b64(prefix_end(self.key))
        return {"request_delete_range": body}


@dataclass(frozen=True)
class Get:
    key: str

    def wire(self) -> dict[str, Any]:
        return {"request_range": {"key": _b64(self.key)}}


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    ranges: list[list[KeyValue]]   # what each Get of the branch taken read, in order


def put_json(key: str, value: Any, lease: int = 0) -> Put:
    return Put(key, json.dumps(value, sort_keys=True, separators=(",", ":")).encode(), lease)


class Etcd:
    """A client of one etcd cluster (its members' client URLs, http://HOST:PORT)."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        errors = []
        for endpoint in list(self.endpoints):
            try:
                async with self._session.post(f"{endpoint}/v3/{path}", json=body) as resp:
                    answer: dict[str, Any] = await resp.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError) as exc:
                errors.append(f"{endpoint}: {exc or type(exc).__name__}")
                continue
            if "error" in answer:
                message = str(answer.get("message") or answer["error"])
                if "no leader" in message or "timed out" in message:   # this member cannot serve: another may
                    errors.append(f"{endpoint}: {message}")
                    continue
                raise EtcdError(f"etcd {path}: {message}")
            if endpoint != self.endpoints[0]:   # ask the member that answered first next time
                self.endpoints.remove(endpoint)
                self.endpoints.insert(0, endpoint)
            return answer
        raise EtcdUnavailable(f"etcd cannot be reached ({'; '.join(errors)}); check that etcd runs and "
                              "that etcd_endpoints in ctd.toml name its client URLs")

    # ---------------------------------------------------------------- keys

    async def get(self, key: str) -> KeyValue | None:
        answer = await self._call("kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        return KeyValue.parse(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        answer = await self._call("kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return [KeyValue.parse(kv) for kv in answer.get("kvs") or []]

    async def put(self, key: str, value: bytes, lease: int = 0) -> None:
        await self._call("kv/put", Put(key, value, lease).wire()["request_put"])

    async def delete(self, key: str, prefix: bool = False) -> int:
        answer = await self._call("kv/deleterange", Delete(key, prefix).wire()["request_delete_range"])
        return int(answer.get("deleted", 0))

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        """All of `compare` hold: `success` is applied, else `failure`; atomically."""
        answer = await self._call("kv/txn", {"compare": [c.wire() for c in compare],
                                             "success": [o.wire() for o in success],
                                             "failure": [o.wire() for o in failure]})
        ranges = [[KeyValue.parse(kv) for kv in (r["response_range"].get("kvs") or [])]
                  for r in answer.get("responses") or [] if "response_range" in r]
        return TxnResult(bool(answer.get("succeeded", False)), ranges)

    # ---------------------------------------------------------------- leases

    async def grant(self, ttl: int) -> int:
        answer = await self._call("lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"])

    async def keepalive(self, lease: int) -> int:
        """Refresh a lease; its TTL, 0 when it has lapsed (or was revoked)."""
        answer = await self._call("lease/keepalive", {"ID": str(lease)})
        return int((answer.get("result") or {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """Drop a lease and every key attached to it; one already gone is no error."""
        try:
            await self._call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in exc.message:
                raise

    async def version(self) -> str:
        answer = await self._call("maintenance/status", {})
        return str(answer.get("version", "?"))
