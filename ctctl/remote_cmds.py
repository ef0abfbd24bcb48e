"""ctctl info, token, audit and remote: the remote API from the command line (ctctl/connect.py
picks the socket or a remote for every command)."""

from __future__ import annotations

import ssl
import sys
from typing import Any

import click

from ctctl.client import ApiError, Client
from ctctl.clientcert import ensure_client_certificate
from ctctl.output import emit, table
from ctctl.remotes import LOCAL, Remote, RemoteConfig, check_url, normalize_fingerprint
from ctctl.shared import FORMAT, client
from ctctl.trust_cmds import ROLE_HELP, ROLES, decode_join_token, redeem, trust

# ------------------------------------------------------------------ info

@click.command()
@FORMAT
def info(fmt: str) -> None:
    """The server: version, kernel, storage, and the HTTPS listener's certificate fingerprint."""
    data = client().get("/1.0")

    def render(i: dict[str, Any]) -> str:
        https = i.get("https") or {}
        rows = [("version", i.get("version")), ("kernel", i.get("kernel")),
                ("storage", (i.get("storage") or {}).get("driver")), ("cgroup", f"v{i.get('cgroup_version')}"),
                ("https", https.get("address") or "off (set https_address in ctd.toml)")]
        if https:
            rows.append(("certificate SHA-256", https.get("certificate_fingerprint")))
        rows.append(("boot sequence", _boot_text(i.get("boot") or {})))
        return "\n".join(f"{k + ':':<20} {v if v is not None else '-'}" for k, v in rows)

    emit(fmt, data, render)


def _boot_text(boot: dict[str, Any]) -> str:
    """The autostart sequence of this host boot: its state, what started and what failed."""
    steps = boot.get("steps") or []
    started = [s["name"] for s in steps if s["outcome"] in ("started", "running")]
    failed = [f"{s['name']} ({s['detail']})" for s in steps if s["outcome"] == "failed"]
    text = str(boot.get("state", "-"))
    if boot.get("group"):
        text += f", {boot['group']}"
    if started:
        text += f"; started {', '.join(started)}"
    if failed:
        text += f"; FAILED {', '.join(failed)}"
    return text


# ------------------------------------------------------------------ tokens

@click.group()
def token() -> None:
    """API tokens for the HTTPS listener (managed on the host, over the socket)."""


@token.command(name="create")
@click.argument("name")
@click.option("--expires", help="lifetime, e.g. 30d, 12h, 2w (default: never expires)")
@click.option("--role", type=click.Choice(ROLES), default="admin", show_default=True, help=ROLE_HELP)
@click.option("--project", default="default", show_default=True,
              help="the project an operator or tenant token acts in (ctctl project create)")
def token_create(name: str, expires: str | None, role: str, project: str) -> None:
    """Make a token; its secret is printed this once (ctd keeps only a hash)."""
    body = {"name": name, "role": role, "project": project}
    if expires:
        body["expires"] = expires
    made = client().request("POST", "/1.0/tokens", body)["token"]
    click.echo(made["secret"])
    click.echo(f"Created token {made['name']} (role {made['role']}, project {made['project']}, "
               f"expires {made['expires_at'] or 'never'}); "
               "the secret above is shown only now", err=True)


@token.command(name="list")
@FORMAT
def token_list(fmt: str) -> None:
    """Tokens (never their secrets)."""
    rows = client().get("/1.0/tokens")["tokens"]
    emit(fmt, rows, lambda ts: table(
        ["NAME", "ROLE", "PROJECT", "CREATED", "EXPIRES"],
        [[t["name"], t["role"], t["project"], t["created_at"],
          ("expired " if t["expired"] else "") + (t["expires_at"] or "never")] for t in ts]))


@token.command(name="revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke a token: requests with it are refused from now on."""
    client().request("DELETE", f"/1.0/tokens/{name}")
    click.echo(f"Revoked token {name}")


# ------------------------------------------------------------------ audit

@click.command()
@click.option("--since", help="only entries from this long ago (1h, 2d) or this time (2026-01-31T12:00)")
@click.option("--project", help="only requests that acted in this project")
@FORMAT
def audit(since: str | None, project: str | None, fmt: str) -> None:
    """The audit log: every mutating request, who made it, from where, and its result."""
    query = {k: v for k, v in (("since", since), ("project", project)) if v}
    entries = client().get("/1.0/audit", **query)["entries"]
    emit(fmt, entries, lambda es: table(
        ["TIME", "IDENTITY", "PROJECT", "SOURCE", "METHOD", "PATH", "TARGET", "STATUS"],
        [[e["time"], _who(e), e.get("project"), e["source"], e["method"], e["path"], e["target"], e["status"]]
         for e in es]))


def _who(entry: dict[str, Any]) -> str:
    """A certificate is named with its SHA-256 (the name is only what the admin called it)."""
    fingerprint = entry.get("fingerprint")
    return f"{entry['identity']} sha256:{fingerprint}" if fingerprint else entry["identity"]


# ------------------------------------------------------------------ remotes

@click.group()
def remote() -> None:
    """Other ctd hosts over HTTPS (their certificate pinned by fingerprint)."""


@remote.command(name="add")
@click.argument("name")
@click.argument("url")
@click.option("--token", "secret", help="an API token made there with 'ctctl token create'")
@click.option("--join", "join_token", help="a one-time join token made there with 'ctctl trust token': ctctl "
              "then logs in with a client certificate of its own (no token stored)")
@click.option("--accept-certificate", "accept", help="the server's certificate SHA-256 ('ctctl info' on the "
              "server shows it); without it ctctl shows the fingerprint and asks (a join token carries it)")
def remote_add(name: str, url: str, secret: str | None, join_token: str | None, accept: str | None) -> None:
    """Add a remote: ctctl remote add web1 https://203.0.113.5:8443 --token ctd_... (or --join TOKEN)"""
    if (secret is None) == (join_token is None):
        raise ApiError("give one of --token (an API token) or --join (a join token from 'ctctl trust token')")
    config = RemoteConfig.load()
    config.check_new(name)
    url = check_url(url)
    probe = Remote(name, url, secret, "0" * 64)
    from ctctl.tls import fetch_fingerprint  # not at the top: ssl only for the commands that use it
    try:
        seen = fetch_fingerprint(probe.host, probe.port)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        raise ApiError(f"cannot make a TLS connection to {url}: {exc}") from None
    join = decode_join_token(join_token) if join_token is not None else None
    _check_certificate(url, seen, accept, join.fingerprint if join else None)
    added = Remote(name, url, secret, seen)
    if join is not None:
        ensure_client_certificate()
        redeem(added, join.secret)
    Client("", timeout=30, remote=added).get("/1.0")  # the credentials work (before they are stored)
    config.add(added)
    config.save()
    click.echo(f"Added remote {name} ({url}); use it with 'ctctl --remote {name} ...', '{name}:INSTANCE' "
               f"or 'ctctl remote switch {name}'")


def _check_certificate(url: str, seen: str, accept: str | None, from_token: str | None) -> None:
    """The server's certificate must be the one the user (or the join token) vouches for."""
    for vouched in (accept, from_token):
        if vouched is not None and normalize_fingerprint(vouched) != seen:
            raise ApiError(f"{url} shows a certificate with SHA-256 {seen}, not {normalize_fingerprint(vouched)}: "
                           "not added (someone may be in between, or the fingerprint is of another host)")
    if accept is not None or from_token is not None:
        return
    if sys.stdin.isatty():
        click.echo(f"Certificate SHA-256 of {url}:\n  {seen}\nCompare it with 'ctctl info' on that host.")
        if not click.confirm("Trust this certificate?", default=False):
            raise ApiError("not added")
    else:
        raise ApiError(f"{url} shows a certificate with SHA-256 {seen}; check it against 'ctctl info' on that "
                       "host and pass it with --accept-certificate (no terminal to ask on)")


@remote.command(name="list")
@FORMAT
def remote_list(fmt: str) -> None:
    """Remotes (never their tokens); * marks the default."""
    config = RemoteConfig.load()
    rows: list[dict[str, Any]] = [{"name": LOCAL, "url": "unix socket", "fingerprint": None, "auth": "socket",
                                   "default": config.default == LOCAL}]
    rows += [{"name": r.name, "url": r.url, "fingerprint": r.fingerprint,
              "auth": "certificate" if r.token is None else "token", "default": config.default == r.name}
             for r in sorted(config.remotes.values(), key=lambda r: r.name)]
    emit(fmt, rows, lambda rs: table(["NAME", "URL", "AUTH", "CERTIFICATE SHA-256"],
                                     [[r["name"] + (" *" if r["default"] else ""), r["url"], r["auth"],
                                       r["fingerprint"]] for r in rs]))


@remote.command(name="remove")
@click.argument("name")
def remote_remove(name: str) -> None:
    """Forget a remote (and its token; this user's client certificate stays for other remotes)."""
    config = RemoteConfig.load()
    config.get(name)
    del config.remotes[name]
    if config.default == name:
        config.default = LOCAL
    config.save()
    click.echo(f"Removed remote {name}")


@remote.command(name="switch")
@click.argument("name")
def remote_switch(name: str) -> None:
    """Make NAME the default remote ('local': the socket)."""
    config = RemoteConfig.load()
    if name != LOCAL:
        config.get(name)
    config.default = name
    config.save()
    click.echo(f"Default remote: {name}")


COMMANDS = (info, token, audit, remote, trust)
