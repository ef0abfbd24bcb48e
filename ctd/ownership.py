"""Host-wide resources one ctd owns for its life: its cgroup base, nftables table, NIC name
prefix, id area, socket and state dir.

Each is claimed with flock(LOCK_EX|LOCK_NB) on a file of its own in LOCK_DIR, held until the
daemon exits (the kernel drops it when the process dies, so a crashed ctd never blocks the
next one). Id areas conflict when they overlap, not only when equal: under a global lock, a
new claim reads the areas of every live claim. A second ctd on any claimed resource is
refused before it touches anything, with the setting to change.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctd.errors import Conflict

LOCK_DIR = Path("/run/ctd/locks")
IDS_PREFIX = "ids-"


@dataclass(frozen=True)
class Claim:
    key: str                 # lock file name
    setting: str             # the ctd.toml setting that chooses the resource
    value: str               # the resource, as the user knows it
    span: tuple[int, int] | None = None  # an id area [start, end): overlapping ones conflict


@dataclass(frozen=True)
class Owner:
    """What a claim's lock file says of the ctd holding it (for the conflict's message)."""
    pid: str = "?"
    state_dir: str = "?"
    span: tuple[int, int] | None = None


def path_key(kind: str, path: str | Path) -> str:
    return f"{kind}-{hashlib.sha256(str(path).encode()).hexdigest()[:24]}"


class Ownership:
    """The claims this daemon holds (their fds), released by release() or the process' end."""

    def __init__(self, state_dir: Path, lock_dir: Path = LOCK_DIR) -> None:
        self.state_dir = state_dir
        self.lock_dir = lock_dir
        self._held: list[tuple[int, Path]] = []

    def claim(self, claims: list[Claim]) -> None:
        """Take every claim or none; Conflict names the owner and the setting to change."""
        self.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._global():
            self._sweep()
            try:
                for claim in claims:
                    if claim.span is not None:
                        self._check_overlap(claim)
                    self._held.append((self._take(claim), self.lock_dir / claim.key))
            except BaseException:
                self._release_locked()
                raise

    def release(self) -> None:
        if self._held:
            with self._global():
                self._release_locked()

    def _release_locked(self) -> None:
        """Unlink, then unlock (under the global lock nobody is opening them meanwhile)."""
        while self._held:
            fd, path = self._held.pop()
            path.unlink(missing_ok=True)
            os.close(fd)

    def _sweep(self) -> None:
        """Lock files of ctds that died without releasing them (SIGKILL, a crash) go."""
        for path in self.lock_dir.iterdir():
            if path.name.startswith("."):
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
            except BlockingIOError:
                pass  # a live ctd's
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def _global(self) -> Iterator[None]:
        fd = os.open(self.lock_dir / ".global", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # short: held while claims are checked and taken
            yield
        finally:
            os.close(fd)

    def _take(self, claim: Claim) -> int:
        fd = os.open(self.lock_dir / claim.key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read(fd)
            os.close(fd)
            raise self._conflict(claim, owner) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "state_dir": str(self.state_dir), "setting": claim.setting,
                                  "value": claim.value, "span": claim.span}).encode(), 0)
        return fd

    def _check_overlap(self, claim: Claim) -> None:
        assert claim.span is not None
        start, end = claim.span
        for path in sorted(self.lock_dir.glob(f"{IDS_PREFIX}*")):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # held: a live ctd's area
                    owner = _read(fd)
                    if owner.span is not None and owner.span[0] < end and start < owner.span[1]:
                        raise self._conflict(claim, owner) from None
            finally:
                os.close(fd)

    def _conflict(self, claim: Claim, owner: Owner) -> Conflict:
        who = f"pid {owner.pid}, state dir {owner.state_dir}"
        if claim.span is not None:
            theirs = owner.span or ("?", "?")
            return Conflict(f"another ctd ({who}) owns host ids {theirs[0]}-{theirs[1]}, which overlap this one's "
                            f"{claim.value}; set idmap_base and idmap_end in ctd.toml to an area of their own")
        if claim.setting == "state_dir":
            return Conflict(f"another ctd ({who}) runs on state dir {claim.value}; stop it first, or use another "
                            "--state-dir")
        return Conflict(f"another ctd ({who}) owns {claim.setting} {claim.value!r}; set {claim.setting} in "
                        "ctd.toml to another value")


def _read(fd: int) -> Owner:
    """The lock file's record; what is missing or malformed reads as unknown ('?', no span)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return Owner()
    if not isinstance(data, dict):
        return Owner()
    span = data.get("span")
    pair = None
    if isinstance(span, list) and len(span) == 2 and all(type(n) is int for n in span):
        pair = (span[0], span[1])
    return Owner(str(data.get("pid", "?")), str(data.get("state_dir", "?")), pair)


def daemon_claims(state_dir: Path, socket: Path, cgroup_dirs: dict[str, str], cgroup_name: str, nft_table: str,
                  nic_prefix: str, idmap_start: int, idmap_end: int) -> list[Claim]:
    """What one ctd owns on this host."""
    claims = [Claim(path_key("state", state_dir.resolve()), "state_dir", str(state_dir)),
              Claim(path_key("socket", socket.resolve()), "socket", str(socket))]
    claims += [Claim(path_key("cgroup", d), "cgroup_name", cgroup_name) for d in sorted(set(cgroup_dirs.values()))]
    claims += [Claim(f"nft-{nft_table}", "nft_table", nft_table),
               Claim(f"nic-{nic_prefix}", "nic_prefix", nic_prefix),
               Claim(f"{IDS_PREFIX}{idmap_start}-{idmap_end}", "idmap_base", f"{idmap_start}-{idmap_end - 1}",
                     (idmap_start, idmap_end))]
    return claims
