"""A small client for ctd's REST API over its unix socket or HTTPS (stdlib only, for plain requests)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ctctl.errors import ApiError as ApiError  # re-exported: ctctl's modules take it from here

if TYPE_CHECKING:
    from ctctl.remotes import Remote

DEFAULT_SOCKET = "/run/ctd/ctd.sock"


def default_socket() -> str:
    return os.environ.get("CTD_SOCKET", DEFAULT_SOCKET)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over an AF_UNIX stream socket (ctd's API socket); the one ctctl has."""

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


class CertificateMismatch(ApiError):
    """The server's certificate is not the pinned one: nothing (no token) was sent to it."""


def pinning_context(client_cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """TLS 1.2+, no CA check: the certificate is checked against the pinned fingerprint instead
    (ctd's own certificate is self-signed). With `client_cert` (certificate, key): presented to the
    server, which knows this user by it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None:
        try:
            context.load_cert_chain(*client_cert)
        except (OSError, ssl.SSLError) as exc:
            raise ApiError(f"cannot use the client certificate {client_cert[0]} ({exc}); add the remote "
                           "again with 'ctctl remote add --join'") from None
    return context


def peer_fingerprint(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    return hashlib.sha256(der or b"").hexdigest()


def fetch_fingerprint(host: str, port: int, timeout: float = 10.0) -> str:
    """The SHA-256 of the certificate a TLS server shows (a handshake, no HTTP request)."""
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            pinning_context().wrap_socket(raw, server_hostname=host) as tls:
        return peer_fingerprint(tls)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, fingerprint: str, timeout: float,
                 client_cert: tuple[str, str] | None = None) -> None:
        super().__init__(host, port, timeout=timeout, context=pinning_context(client_cert))
        self.fingerprint = fingerprint

    def connect(self) -> None:
        super().connect()
        seen = peer_fingerprint(cast(ssl.SSLSocket, self.sock))  # HTTPSConnection.connect wrapped it
        if not hmac.compare_digest(seen, self.fingerprint):
            self.sock.close()
            raise CertificateMismatch(
                f"the certificate of {self.host}:{self.port} has SHA-256 {seen}, not the pinned {self.fingerprint}: "
                "refusing to talk to it. If the server's certificate was changed on purpose, "
                "'ctctl remote remove' and 'remote add' it again", "certificate")


@dataclass
class Client:
    socket_path: str
    timeout: float = 3700.0
    remote: Remote | None = None

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

    def _connection(self) -> http.client.HTTPConnection:
        if self.remote is not None:
            return _PinnedHTTPSConnection(self.remote.host, self.remote.port, self.remote.fingerprint, self.timeout,
                                          self.client_cert())
        return UnixHTTPConnection(self.socket_path, self.timeout)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.remote.token}"} if self.remote and self.remote.token else {}

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        if query:
            path += "?" + urllib.parse.urlencode(query, doseq=True)
        payload = None if body is None else json.dumps(body)
        response, raw = self._exchange(method, path, payload)
        try:
            data = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise ApiError(f"ctd sent a reply that is not JSON (HTTP {response.status})") from None
        self._raise_for(response.status, data)
        return data

    def text(self, path: str) -> str:
        """GET a plain-text resource (/1.0/metrics); errors come as JSON like everywhere."""
        response, raw = self._exchange("GET", path, None)
        if response.status >= 400:
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                data = {}
            self._raise_for(response.status, data if isinstance(data, dict) else {})
        return raw.decode(errors="replace")

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

    def _exchange(self, method: str, path: str, payload: str | None) -> tuple[http.client.HTTPResponse, bytes]:
        conn = self._connection()
        try:
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            headers.update(self.auth_headers())
            try:
                conn.request(method, path, payload, headers)
                response = conn.getresponse()
                raw = response.read()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if self.remote:
                    raise ApiError(f"cannot reach {self.where}: {exc.strerror}; is ctd's https_address set "
                                   "there?") from None
                raise ApiError(f"cannot reach ctd at {self.socket_path} ({exc.strerror}); "
                               "is it running? Start it with 'ctd' or 'systemctl start ctd'") from None
            except PermissionError:
                raise ApiError(f"permission denied on {self.socket_path}: run as root or as a member "
                               "of group 'ctd'") from None
            except OSError as exc:
                raise ApiError(f"talking to ctd at {self.where} failed: {exc}") from None
        finally:
            conn.close()
        return response, raw

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
