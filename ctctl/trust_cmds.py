"""ctctl trust: the client certificates a ctd's HTTPS listener accepts, and join tokens.

Also the client half of a join: decoding a token and redeeming it with this user's certificate
(ctctl remote add NAME URL --join TOKEN, in remote_cmds.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ctctl.client import ApiError, Client
from ctctl.output import emit, table
from ctctl.remotes import Remote, normalize_fingerprint
from ctctl.shared import FORMAT, client

MAX_CERT_FILE = 64 * 1024


def read_certificate(path: str) -> str:
    """A certificate file as PEM text (a DER file is converted)."""
    data = Path(path).read_bytes()[:MAX_CERT_FILE + 1]
    if len(data) > MAX_CERT_FILE:
        raise ApiError(f"{path} is over 64 kB: not a certificate")
    if b"-----BEGIN" in data:
        return data.decode("ascii", "replace")
    return ssl.DER_cert_to_PEM_cert(data)


ROLES = ("admin", "operator", "tenant")   # ctd/remote/identity.py Role; docs/remote.md "Roles"
ROLE_HELP = ("admin: everything; operator: everything inside its project, nothing host-wide; "
             "tenant: self-service on its project's instances")


@click.group()
def trust() -> None:
    """Client certificates the HTTPS listener accepts (admin only)."""


@trust.command(name="add")
@click.argument("certfile", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="how ctd names it (default: from the certificate's common name)")
@click.option("--role", type=click.Choice(ROLES), default="admin", show_default=True, help=ROLE_HELP)
@click.option("--project", default="default", show_default=True, help="the project an operator or tenant acts in")
def trust_add(certfile: str, name: str | None, role: str, project: str) -> None:
    """Trust a client certificate (PEM or DER) by its SHA-256 fingerprint."""
    body = {"certificate": read_certificate(certfile), "role": role, "project": project}
    if name:
        body["name"] = name
    added = client().request("POST", "/1.0/trust", body)["certificate"]
    click.echo(f"Trusted {added['name']} (SHA-256 {added['fingerprint']}, role {added['role']}, "
               f"valid until {added['not_after']})")


@trust.command(name="list")
@FORMAT
def trust_list(fmt: str) -> None:
    """Trusted certificates, then pending join tokens."""
    data = client().get("/1.0/trust")

    def render(d: dict[str, Any]) -> str:
        shown = table(["NAME", "ROLE", "PROJECT", "SHA-256", "VALID UNTIL"],
                      [[c["name"], c["role"], c["project"], c["fingerprint"],
                        ("expired " if c["expired"] else "") + c["not_after"]] for c in d["certificates"]])
        if d["tokens"]:
            shown += "\n\nPending join tokens:\n" + table(
                ["NAME", "ROLE", "EXPIRES"], [[t["name"], t["role"], t["expires_at"]] for t in d["tokens"]])
        return shown

    emit(fmt, data, render)


@trust.command(name="remove")
@click.argument("name")
def trust_remove(name: str) -> None:
    """Stop trusting a certificate (NAME or its fingerprint): its next request is refused."""
    client().request("DELETE", f"/1.0/trust/{name}")
    click.echo(f"No longer trusted: {name}")


@trust.command(name="token")
@click.argument("name")
@click.option("--expires", default="1h", show_default=True, help="how long it may be redeemed, e.g. 30m, 1d")
@click.option("--role", type=click.Choice(ROLES), default="admin", show_default=True,
              help="the role the joining certificate gets: " + ROLE_HELP)
@click.option("--project", default="default", show_default=True, help="the project the joining certificate acts in")
def trust_token(name: str, expires: str, role: str, project: str) -> None:
    """A one-time join token; the client runs 'ctctl remote add REMOTE https://HOST:8443 --join TOKEN'."""
    made = client().request("POST", "/1.0/trust/tokens",
                            {"name": name, "expires": expires, "role": role, "project": project})["token"]
    click.echo(made["token"])
    click.echo(f"Join token for {made['name']} (role {made['role']}), usable once until {made['expires_at']}",
               err=True)


@trust.command(name="revoke-token")
@click.argument("name")
def trust_revoke_token(name: str) -> None:
    """Revoke a pending join token."""
    client().request("DELETE", f"/1.0/trust/tokens/{name}")
    click.echo(f"Revoked join token {name}")


# ------------------------------------------------------------------ the client half of a join

@dataclass(frozen=True)
class JoinToken:
    client_name: str
    fingerprint: str  # the server certificate's SHA-256
    secret: str


def decode_join_token(text: str) -> JoinToken:
    """What 'ctctl trust token' printed: base64 of a JSON object."""
    raw = text.strip()
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        token = JoinToken(str(data["client_name"]), normalize_fingerprint(str(data["fingerprint"])),
                          str(data["secret"]))
    except (ValueError, binascii.Error, KeyError, TypeError, ApiError):
        raise ApiError("the join token is not one 'ctctl trust token' printed (copy it whole)") from None
    return token


def redeem(remote: Remote, secret: str) -> None:
    """POST the secret over a connection that presents this user's certificate (remote.token is None),
    then check that the remote knows this user by it."""
    joining = Client("", timeout=30, remote=remote)
    try:
        joining.request("POST", "/1.0/trust/join", {"secret": secret})
    except ApiError as exc:
        if exc.status == 409:  # trusted there already (fine), or the token's name is taken (not fine)
            try:
                joining.get("/1.0")
            except ApiError:
                raise ApiError(f"{remote.url} did not add this user's certificate: {exc.message}") from None
            return  # the token stays unused
        if exc.status == 401:
            raise ApiError(f"{remote.url} refused the join token: it was used already, has expired or is "
                           "mistyped; ask for a new one ('ctctl trust token' there)", "unauthorized", 401) from None
        raise
