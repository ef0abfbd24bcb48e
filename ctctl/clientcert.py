"""This user's TLS client certificate: made once (EC P-256, self-signed) beside remotes.toml, 0600.

A remote that trusts it (ctctl trust add, or a join token redeemed by 'ctctl remote add --join')
knows this user by its SHA-256 fingerprint; no token is stored for such a remote.
"""

from __future__ import annotations

import datetime
import getpass
import socket
from pathlib import Path

from ctctl.client import ApiError
from ctctl.remotes import client_certificate, write_private

VALID_DAYS = 3650


def ensure_client_certificate() -> tuple[Path, Path]:
    """(certificate, key), made now when this user has none yet."""
    cert_path, key_path = client_certificate()
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise ApiError("making a client certificate needs the Python package 'cryptography' "
                       "(pip install cryptography)") from None
    key = ec.generate_private_key(ec.SECP256R1())
    who = f"ctctl-{getpass.getuser()}@{socket.gethostname()}"[:64]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, who)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
