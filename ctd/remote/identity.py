"""Who is asking: every request carries one Identity (the local admin on the socket, a token or a
trusted client certificate on HTTPS)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    """What an identity may do: ctd/remote/policy.py holds the table (docs/remote.md, "Roles")."""

    ADMIN = "admin"        # everything, host-wide
    OPERATOR = "operator"  # everything inside its project; nothing host-wide
    TENANT = "tenant"      # self-service on its project's instances

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, minimum: Role) -> bool:
        return self.rank >= minimum.rank


_RANK = {Role.TENANT: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


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
