"""ctctl's remotes: other ctd hosts reached over HTTPS, kept 0600 in the user's config dir.

~/.config/ctctl/remotes.toml (or $XDG_CONFIG_HOME/ctctl/remotes.toml):

    default = "web1"
    [remotes.web1]
    url = "https://203.0.113.5:8443"
    token = "ctd_..."
    fingerprint = "9641e0..."   # SHA-256 of the server's certificate: ctctl talks to no other
    [remotes.lab]               # no token: ctctl logs in with its client certificate
    url = "https://[2001:db8::7]:8443"
    fingerprint = "0b5c..."

The client certificate and key (made by 'ctctl remote add --join') sit beside it: client.crt and
client.key (0600), one pair per user, like Incus' client.crt.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ctctl.errors import ApiError

LOCAL = "local"  # the unix socket; not a name a remote may take
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ctctl"


def config_file() -> Path:
    return config_dir() / "remotes.toml"


def client_certificate() -> tuple[Path, Path]:
    """(certificate, key) this user presents to remotes that trust it."""
    return config_dir() / "client.crt", config_dir() / "client.key"


def normalize_fingerprint(text: str) -> str:
    """"AB:CD:..." or "abcd..." -> "abcd..." (64 hex digits)."""
    value = text.strip().lower().replace(":", "")
    if not FINGERPRINT_RE.fullmatch(value):
        raise ApiError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return value


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ApiError(f"remote URL {url!r} must be https://HOST[:PORT] (ctd speaks no plain HTTP)")
    try:
        _ = parts.port  # raises on a bad one
    except ValueError:
        raise ApiError(f"remote URL {url!r} has a bad port") from None
    return f"https://{parts.netloc}"


def write_private(path: Path, data: bytes) -> None:
    """Written 0600 (in a 0700 directory) from the first byte, then renamed into place."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    token: str | None  # None: log in with the client certificate
    fingerprint: str

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 8443


@dataclass
class RemoteConfig:
    remotes: dict[str, Remote] = field(default_factory=dict)
    default: str = LOCAL
    path: Path = field(default_factory=config_file)

    @classmethod
    def load(cls, path: Path | None = None) -> RemoteConfig:
        path = path or config_file()
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return cls(path=path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ApiError(f"{path}: cannot read it ({exc}); fix or remove the file") from None
        import tomllib  # here: without a remotes file (the usual local case) it is not loaded
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ApiError(f"{path}: cannot read it ({exc}); fix or remove the file") from None
        remotes = {}
        for name, values in (data.get("remotes") or {}).items():
            try:
                token = values.get("token")
                remotes[name] = Remote(name, check_url(values["url"]), None if token is None else str(token),
                                       normalize_fingerprint(values["fingerprint"]))
            except (KeyError, TypeError, AttributeError):
                raise ApiError(f"{path}: remote {name!r} needs url and fingerprint (and a token unless it "
                               "trusts this user's client certificate)") from None
        default = data.get("default", LOCAL)
        if default != LOCAL and default not in remotes:
            default = LOCAL
        return cls(remotes, default, path)

    def save(self) -> None:
        """Written 0600 in a 0700 directory, then renamed into place: the tokens are secrets."""
        lines = [f"default = {json.dumps(self.default)}", ""]
        for remote in sorted(self.remotes.values(), key=lambda r: r.name):
            lines += [f"[remotes.{json.dumps(remote.name)}]", f"url = {json.dumps(remote.url)}"]
            if remote.token is not None:
                lines.append(f"token = {json.dumps(remote.token)}")
            lines += [f"fingerprint = {json.dumps(remote.fingerprint)}", ""]
        write_private(self.path, "\n".join(lines).encode())

    def get(self, name: str) -> Remote:
        if name not in self.remotes:
            known = ", ".join(sorted(self.remotes)) or "none yet ('ctctl remote add' makes one)"
            raise ApiError(f"no remote named {name!r}; known: {known}")
        return self.remotes[name]

    def check_new(self, name: str) -> None:
        """A name a new remote may take (checked before anything is sent to it)."""
        if name == LOCAL or not NAME_RE.fullmatch(name):
            raise ApiError(f"remote name {name!r}: use letters, digits, '.', '_', '-' "
                           f"('{LOCAL}' is the local socket)")
        if name in self.remotes:
            raise ApiError(f"a remote named {name} exists; 'ctctl remote remove {name}' first")

    def add(self, remote: Remote) -> None:
        self.check_new(remote.name)
        self.remotes[remote.name] = remote
