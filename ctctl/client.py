"""A small client for ctd's REST API over its unix socket (stdlib only, for plain requests)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_SOCKET = "/run/ctd/ctd.sock"


def default_socket() -> str:
    return os.environ.get("CTD_SOCKET", DEFAULT_SOCKET)


class ApiError(Exception):
    """Anything ctctl should print as one line and exit non-zero for."""

    def __init__(self, message: str, code: str = "error", status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass
class Client:
    socket_path: str
    timeout: float = 3700.0

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        if query:
            path += "?" + urllib.parse.urlencode(query, doseq=True)
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                conn.request(method, path, payload, headers)
                response = conn.getresponse()
                raw = response.read()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise ApiError(f"cannot reach ctd at {self.socket_path} ({exc.strerror}); "
                               "is it running? Start it with 'ctd' or 'systemctl start ctd'") from None
            except PermissionError:
                raise ApiError(f"permission denied on {self.socket_path}: run as root or as a member "
                               "of group 'ctd'") from None
            except OSError as exc:
                raise ApiError(f"talking to ctd at {self.socket_path} failed: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise ApiError(f"ctd sent a reply that is not JSON (HTTP {response.status})") from None
        if response.status >= 400:
            raise ApiError(data.get("error", f"HTTP {response.status}"), data.get("code", "error"), response.status)
        return data

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def run(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
            progress: Callable[[str], None] | None = None) -> dict:
        """A request that returns an operation: wait for it (showing its progress); raise if it
        failed. Ctrl-C asks ctd to cancel it."""
        if progress is None:  # nothing to show meanwhile: let ctd answer when it is done
            query = {**(query or {}), "wait": "true"}
        reply = self.request(method, path, body, query)
        op = reply.get("operation")
        if op is None:
            return reply
        try:
            while op["status"] == "running":
                op = self.get(f"/1.0/operations/{op['id']}/wait", timeout=1 if progress else 60)["operation"]
                if progress and op.get("progress"):
                    progress(op["progress"])
        except KeyboardInterrupt:
            self.request("DELETE", f"/1.0/operations/{op['id']}")
            raise ApiError(f"interrupted: asked ctd to cancel the {op['kind']} of {op['target']}") from None
        if op["status"] == "failure":
            raise ApiError(op.get("error") or "the operation failed", op.get("code") or "failed")
        return op.get("result") or {}
