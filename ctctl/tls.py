"""The heavier half of ctctl's HTTP: TLS to a remote (the pinned certificate, the client
certificate) and http.client connections. Imported only when a command talks to a remote over
HTTPS (or by `ctctl check`): `ctctl list` on the local socket never loads ssl or http.client
(ctctl/client.py speaks the few lines of HTTP/1.1 that need)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import ssl
from typing import cast

from ctctl.errors import ApiError


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


class PinnedHTTPSConnection(http.client.HTTPSConnection):
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
