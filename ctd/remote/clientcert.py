"""Ask HTTPS clients for a certificate without letting OpenSSL judge it.

ctd trusts client certificates by exact fingerprint (ctd/remote/trust.py), most of them
self-signed. Python's `ssl` can only ask for a certificate *and* verify it against CAs
(CERT_OPTIONAL): an unknown self-signed one would then abort the handshake, and the client would
see a TLS alert instead of the 401 (rate limited, audited) that a bad token gets. So the listener's
SSL_CTX gets a certificate-verify callback that accepts any chain (OpenSSL's
SSL_CTX_set_cert_verify_callback, through ctypes); the access middleware then decides, per
request, from the certificate's fingerprint. The client still proves it holds the certificate's
key (the handshake's CertificateVerify is checked by OpenSSL whatever the callback says).

The SSL_CTX pointer is read from Python's SSLContext object; before it is used, the libssl this
loads must be the one Python's ssl module runs on and the pointer must show the verify mode and
options the SSLContext reports. If anything does not match, nothing is hooked and the listener
asks for no certificate (tokens keep working; the caller logs why).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ssl

SSL_VERIFY_PEER = 0x01

_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _accept_any_chain(store_ctx: int | None, arg: int | None) -> int:
    return 1  # the fingerprint is checked per request; the key proof is OpenSSL's own


_ACCEPT = _VerifyCallback(_accept_any_chain)  # module-level: OpenSSL keeps the pointer for the process' life


def _libssl() -> ctypes.CDLL:
    """The libssl Python's ssl module uses (dlopen of a loaded soname returns the same library)."""
    major = ssl.OPENSSL_VERSION_INFO[0]
    name = f"libssl.so.{major}" if major >= 3 else (ctypes.util.find_library("ssl") or "libssl.so")
    lib = ctypes.CDLL(name)
    lib.OpenSSL_version_num.restype = ctypes.c_ulong
    lib.OpenSSL_version_num.argtypes = []
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_set_cert_verify_callback.restype = None
    lib.SSL_CTX_set_cert_verify_callback.argtypes = [ctypes.c_void_p, _VerifyCallback, ctypes.c_void_p]
    return lib


def request_any_client_certificate(context: ssl.SSLContext) -> str | None:
    """Make `context` ask every client for a certificate and accept any; None when done, else why not."""
    context.verify_mode = ssl.CERT_OPTIONAL  # ask, do not require: token clients have none
    why = _hook(context)
    if why is not None:
        context.verify_mode = ssl.CERT_NONE  # OpenSSL's CA check would turn away unknown certificates
    return why


def _hook(context: ssl.SSLContext) -> str | None:
    try:
        lib = _libssl()
    except (OSError, AttributeError) as exc:
        return f"cannot load libssl ({exc})"
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        return f"libssl {lib.OpenSSL_version_num():#x} is not the one Python uses ({ssl.OPENSSL_VERSION})"
    # PySSLContext starts with PyObject_HEAD, then the SSL_CTX pointer.
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or lib.SSL_CTX_get_verify_mode(pointer) != SSL_VERIFY_PEER \
            or lib.SSL_CTX_get_options(pointer) != int(context.options):
        return "this Python's SSLContext layout is not the expected one"
    lib.SSL_CTX_set_cert_verify_callback(pointer, _ACCEPT, None)
    return None


def peer_certificate(transport: object) -> bytes | None:
    """The DER certificate the TLS peer of an asyncio transport presented, or None."""
    get = getattr(transport, "get_extra_info", None)
    ssl_object = get("ssl_object") if get is not None else None
    if ssl_object is None:
        return None
    try:
        der: bytes | None = ssl_object.getpeercert(binary_form=True)
    except ValueError:  # handshake not done (cannot happen once HTTP is read)
        return None
    return der or None
