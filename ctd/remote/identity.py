"""Who is asking: every request carries one Identity (the local admin on the socket, a token or a
trusted client certificate on HTTPS)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    ADMIN = "admin"  # everything; operator and tenant roles come with projects


class IdentityKind(enum.Enum):
    LOCAL = "local"  # a process on the unix socket (its permissions are the authentication)
    TOKEN = "token"
    CERTIFICATE = "certificate"  # a trusted TLS client certificate (ctctl trust add, or a join token)


DEFAULT_PROJECT = "default"


@dataclass(frozen=True)
class Identity:
    name: str
    kind: IdentityKind
    role: Role
    project: str = DEFAULT_PROJECT
    fingerprint: str | None = None  # a certificate's SHA-256: what the audit log records beside its name

    @property
    def label(self) -> str:
        """How the audit log names it: "local:UID", "token:NAME" or "certificate:NAME"."""
        return f"{self.kind.value}:{self.name}"

    @property
    def is_local(self) -> bool:
        return self.kind is IdentityKind.LOCAL
