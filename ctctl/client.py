"""A small client for ctd's REST API over its unix socket or HTTPS (stdlib only, for plain requests).

Kept light on purpose: a local request (`ctctl list`, `status` …) imports socket and json only;
the unix socket is spoken to in plain HTTP/1.1 here (one request per connection), and ssl and
http.client (ctctl/tls.py) are loaded when a remote is used. tests/unit/test_ctctl_imports.py
guards it."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ctctl.errors import ApiError as ApiError  # re-exported: ctctl's modules take it from here

if TYPE_CHECKING:
    from ctctl.remotes import Remote

DEFAULT_SOCKET = "/run/ctd/ctd.sock"
_TLS_NAMES = ("pinning_context", "fetch_fingerprint", "peer_fingerprint", "CertificateMismatch", "UnixHTTPConnection")


def __getattr__(name: str) -> Any:
    """The TLS helpers used to live here (tests and scripts import them from here): loaded on use."""
    if name in _TLS_NAMES:
        from ctctl import tls
        return getattr(tls, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_socket() -> str:
    return os.environ.get("CTD_SOCKET", DEFAULT_SOCKET)


class Reply:
    """An HTTP reply: status and body. (Plain classes here, not dataclasses: the dataclasses
    module loads inspect, ast and tokenize, a good part of a `ctctl list` run.)"""

    __slots__ = ("status", "body")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


def unix_exchange(path: str, timeout: float, method: str, target: str, payload: bytes | None,
                  headers: dict[str, str]) -> Reply:
    """One HTTP/1.1 request on ctd's unix socket (Connection: close: the reply ends at EOF)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close",
             f"Content-Length: {len(payload or b'')}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + (payload or b""))
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    return parse_reply(b"".join(chunks))


def parse_reply(raw: bytes) -> Reply:
    """Status and body of a whole HTTP/1.1 reply (Content-Length, chunked, or up to EOF)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OSError("the reply is not HTTP (cut short?)")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return Reply(int(parts[1]), body)


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


class Client:
    """Requests to ctd: on its unix socket, or on a remote's HTTPS when `remote` is given."""

    def __init__(self, socket_path: str, timeout: float = 3700.0, remote: Remote | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.remote = remote

    def __repr__(self) -> str:
        return f"Client({self.where!r})"

    @property
    def where(self) -> str:
        return f"remote {self.remote.name} ({self.remote.url})" if self.remote else self.socket_path

    def client_cert(self) -> tuple[str, str] | None:
        """(certificate, key) to present: for a remote without a token, this user's client certificate."""
        if self.remote is None or self.remote.token is not None:
            return None
        from ctctl.remotes import client_certificate
        cert, key = client_certificate()
        return str(cert), str(key)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.remote.token}"} if self.remote and self.remote.token else {}

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        if query:
            from urllib.parse import urlencode  # not at the top: most commands send no query
            path += "?" + urlencode(query, doseq=True)
        payload = None if body is None else json.dumps(body)
        response = self._exchange(method, path, payload)
        raw = response.body
        try:
            data = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise ApiError(f"ctd sent a reply that is not JSON (HTTP {response.status})") from None
        self._raise_for(response.status, data)
        return data

    def text(self, path: str) -> str:
        """GET a plain-text resource (/1.0/metrics); errors come as JSON like everywhere."""
        return self.data(path).decode(errors="replace")

    def data(self, path: str) -> bytes:
        """GET a resource that is not JSON as the bytes sent (a console log); errors come as
        JSON like everywhere."""
        response = self._exchange("GET", path, None)
        raw = response.body
        if response.status >= 400:
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                data = {}
            self._raise_for(response.status, data if isinstance(data, dict) else {})
        return raw

    def _raise_for(self, status: int, data: Any) -> None:
        if status == 401 and self.remote and self.remote.token is None:
            raise ApiError(f"{self.where} does not trust this user's client certificate (removed or expired): "
                           "ask its admin for a join token ('ctctl trust token') and add the remote again",
                           "unauthorized", 401)
        if status == 401 and self.remote:
            raise ApiError(f"{self.where} refused the token (revoked, expired or wrong): make a new one there "
                           "with 'ctctl token create' and add the remote again", "unauthorized", 401)
        if status >= 400:
            raise ApiError(data.get("error", f"HTTP {status}"), data.get("code", "error"), status)

    def _exchange(self, method: str, path: str, payload: str | None) -> Reply:
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        headers.update(self.auth_headers())
        body = None if payload is None else payload.encode()
        try:
            if self.remote is None:
                return unix_exchange(self.socket_path, self.timeout, method, path, body, headers)
            return self._https(method, path, body, headers)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if self.remote:
                raise ApiError(f"cannot reach {self.where}: {exc.strerror}; is ctd's https_address set "
                               "there?") from None
            raise ApiError(f"cannot reach ctd at {self.socket_path} ({exc.strerror}); "
                           "is it running? Start it with 'ctd' or 'systemctl start ctd'") from None
        except PermissionError:
            raise ApiError(f"permission denied on {self.socket_path}: run as root or as a member "
                           "of group 'ctd'") from None
        except ApiError:
            raise
        except OSError as exc:
            raise ApiError(f"talking to ctd at {self.where} failed: {exc}") from None

    def _https(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        from ctctl.tls import PinnedHTTPSConnection
        assert self.remote is not None
        conn = PinnedHTTPSConnection(self.remote.host, self.remote.port, self.remote.fingerprint, self.timeout,
                                     self.client_cert())
        try:
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            return Reply(response.status, response.read())
        finally:
            conn.close()

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def run(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """A request that returns an operation: wait for it (showing its progress); raise if it
        failed. Ctrl-C asks ctd to cancel it."""
        if progress is None:  # nothing to show meanwhile: let ctd answer when it is done
            query = {**(query or {}), "wait": "true"}
        reply: dict[str, Any] = self.request(method, path, body, query)
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
