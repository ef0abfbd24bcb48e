"""Node-to-node requests: HTTPS with mutual TLS over the remote API (docs/remote.md).

The calling node presents its own HTTPS server certificate as its client certificate; the
called node accepts it because that fingerprint is a member's in etcd (`/ctd/nodes/NAME`
records each node's), and the caller pins the called node's fingerprint from the same record:
no certificate authority, no token on disk. Requests run in a thread (http.client), one
connection each: the pinning is checked right after the handshake, before a byte of the
request is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ctd.errors import Unavailable

TIMEOUT = 3600.0   # a forwarded request waits for its operation (?wait=true): as long as the work


@dataclass(frozen=True)
class PeerReply:
    status: int
    body: bytes
    content_type: str


class _Pinned(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, fingerprint: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.fingerprint = fingerprint

    def connect(self) -> None:
        super().connect()
        der = cast(ssl.SSLSocket, self.sock).getpeercert(binary_form=True) or b""
        seen = hashlib.sha256(der).hexdigest()
        if not hmac.compare_digest(seen, self.fingerprint):
            self.close()
            raise Unavailable(f"the node at {self.host}:{self.port} shows certificate SHA-256 {seen}, not the "
                              f"{self.fingerprint} its membership records; nothing was sent")


def client_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE   # pinned instead (_Pinned.connect)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def call(address: str, fingerprint: str, context: ssl.SSLContext, method: str, path_and_query: str,
         body: bytes | None, content_type: str | None, timeout: float = TIMEOUT) -> PeerReply:
    """One request to a peer (blocking: run it in a thread)."""
    url = urllib.parse.urlsplit(address)
    if url.scheme != "https" or not url.hostname:
        raise Unavailable(f"the peer's address {address!r} is not an https:// URL")
    conn = _Pinned(url.hostname, url.port or 8443, fingerprint, context, timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path_and_query, body, headers)
        resp = conn.getresponse()
        return PeerReply(resp.status, resp.read(), resp.getheader("Content-Type") or "application/json")
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"the node at {address} did not answer ({exc})") from None
    finally:
        conn.close()
