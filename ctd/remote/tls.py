"""The HTTPS listener's certificate: made at first start (self-signed) or supplied by the operator."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from ctd import validate
from ctd.errors import CtdError, InvalidRequest

VALID_YEARS = 10
# Seconds a peer has to complete its TLS handshake before ctd drops the connection (docs/remote.md).
HANDSHAKE_TIMEOUT = 10.0
log = logging.getLogger("ctd.remote")


@dataclass(frozen=True)
class ListenAddress:
    host: str | None  # None: every address, IPv4 and IPv6
    port: int

    def __str__(self) -> str:
        host = self.host or "[::]"
        return f"[{host}]:{self.port}" if self.host and ":" in self.host else f"{host}:{self.port}"


def parse_listen_address(text: str) -> ListenAddress:
    """"[::]:8443", "127.0.0.1:8443", "[::1]:8443": an IP literal and a port."""
    address, port = validate.ip_and_port("https_address", text, "[::]:8443")
    # asyncio makes an IPv6 socket v6-only: "::" as None listens on IPv4 as well.
    return ListenAddress(None if address == ipaddress.IPv6Address("::") else str(address), port)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate (DER), lowercase hex: what a client pins."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    """Written 0600 from the first byte, then renamed into place (never a half file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def make_self_signed(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())  # fast handshakes, 128-bit security
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ctd"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"ctd@{socket.gethostname()}"[:64])])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName([x509.DNSName(socket.gethostname()), x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365 * VALID_YEARS))
            .add_extension(alt, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class ServerCertificate:
    cert_path: Path
    key_path: Path
    fingerprint: str
    self_signed: bool

    def ssl_context(self) -> ssl.SSLContext:
        """TLS 1.2 and newer only; a client certificate is asked for, not required, and judged per
        request by its fingerprint (see clientcert.py)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        try:
            context.load_cert_chain(self.cert_path, self.key_path)
        except (ssl.SSLError, OSError) as exc:
            raise CtdError(f"cannot use the HTTPS certificate {self.cert_path} with key {self.key_path}: {exc}; "
                           "check that the key matches the certificate (both PEM)") from None
        from ctd.remote.clientcert import request_any_client_certificate
        why = request_any_client_certificate(context)
        if why is not None:
            log.warning("HTTPS clients cannot log in with a certificate (tokens work): %s", why)
        return context


def server_certificate(tls_dir: Path, cert: Path | None, key: Path | None) -> ServerCertificate:
    """The operator's certificate and key when both are set, else ctd's own (made on first use)."""
    if (cert is None) != (key is None):
        raise InvalidRequest("https_cert and https_key go together: set both (PEM files) or neither "
                             "(ctd then makes a self-signed certificate)")
    if cert is not None and key is not None:
        try:
            pem = cert.read_bytes()
            found = fingerprint(pem)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"https_cert {cert}: not a readable PEM certificate ({exc})") from None
        return ServerCertificate(cert, key, found, self_signed=False)
    own_cert, own_key = tls_dir / "server.crt", tls_dir / "server.key"
    if not (own_cert.exists() and own_key.exists()):
        make_self_signed(own_cert, own_key)
    return ServerCertificate(own_cert, own_key, fingerprint(own_cert.read_bytes()), self_signed=True)
