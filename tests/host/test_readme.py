"""The command blocks of README.md and docs/*.md, run as a user would type them, against a fresh daemon.

Every `$ ` line of every command block of every page runs in bash with `ctctl` on PATH talking to this
test's daemon (CTD_SOCKET), HOME in a scratch directory with an ssh key (and `ssh` told to use
it and to accept the new container's host key), stdin at end-of-file (interactive commands
end there), and the working
directory a scratch directory (so relative file names land there). A line must exit 0, or
non-zero where its block's readme-test marker says `fails`; output the page shows must
appear (numbers may differ). Lines marked `skip` are listed, not run. See tests/helpers/readme.py.

The pages run in one session, in the order of PAGES (a later page uses what an earlier one
made: the storage page snapshots the Debian container of the containers page), then any other
docs/*.md in name order, so a new page's commands are tested without a change here.

Placeholders are replaced deterministically: the networks `ctbr0`, `lan0`, `fast0` get names of
this daemon's own (bridges are host-wide), `/srv/` a scratch directory, `10.x.y.` the prefix of
the default network, `<its address>` the IPv4 address of the instance started last.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Daemon, _teardown, needs_root
from tests.helpers.readme import Block, Command, Mode, missing_output, parse

PAGES = ["README.md", "docs/containers.md", "docs/limits.md", "docs/networking.md", "docs/storage.md",
         "docs/vms.md", "docs/api.md"]
# The sections whose blocks must be there: moving a block must not drop it from the run.
SECTIONS = {("README.md", "A tour of ctctl"), ("docs/containers.md", "Real OS templates"),
            ("docs/networking.md", "Networks and NICs"), ("docs/storage.md", "Storage, snapshots, clones, backups"),
            ("docs/vms.md", "Virtual machines")}


def pages() -> list[str]:
    """PAGES in their order, then every other docs/*.md by name."""
    rest = sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))
    return [p for p in PAGES if (REPO / p).exists()] + [p for p in rest if p not in PAGES]


def parse_all() -> list[Block]:
    return [block for page in pages() for block in parse(REPO / page, page)]
COMMAND_TIMEOUT = 400   # the longest line is the debian-12 build: 2-3 min on a busy machine


def test_every_command_block_parses_and_every_marker_matches() -> None:
    """Cheap and rootless: a stale marker or a broken continuation fails here first."""
    assert all((REPO / p).exists() for p in PAGES), [p for p in PAGES if not (REPO / p).exists()]
    blocks = parse_all()
    sections = {(b.page, b.section) for b in blocks}
    assert SECTIONS <= sections, sections
    for block in blocks:
        for cmd in block.commands:
            assert cmd.text, f"{block.page}:{cmd.line}: empty command"


class Session:
    """The shell environment the README's commands run in."""

    def __init__(self, daemon: Daemon, tmp: Path) -> None:
        self.daemon = daemon
        self.work = tmp / "work"
        self.home = tmp / "home"
        self.srv = tmp / "srv"
        bindir = tmp / "bin"
        for d in (self.work, self.home / ".ssh", self.srv, bindir):
            d.mkdir(parents=True, exist_ok=True)
        shim = bindir / "ctctl"
        shim.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m ctctl.main \"$@\"\n")
        shim.chmod(0o755)
        # ssh takes ~ from the passwd entry, not HOME: point it at this session's key and config
        ssh = bindir / "ssh"
        ssh.write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F {self.home}/.ssh/config -i {self.home}/.ssh/id_ed25519 \"$@\"\n")
        ssh.chmod(0o755)
        key = self.home / ".ssh" / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (self.home / ".ssh" / "config").write_text(
            "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
            "  ConnectTimeout 5\n  LogLevel ERROR\n")
        self.env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "HOME": str(self.home),
                    "CTD_SOCKET": str(daemon.socket)}
        self.env.pop("PYTHONPATH", None)
        tag = uuid.uuid4().hex[:4]
        self.names = {"ctbr0": daemon_default_network(daemon), "lan0": f"rl{tag}", "fast0": f"rf{tag}"}
        self.last_started: str | None = None

    def substitute(self, text: str) -> str:
        for word, name in self.names.items():
            text = re.sub(rf"\b{word}\b", name, text)
        text = text.replace("/srv/", f"{self.srv}/")
        if "10.x.y." in text:
            text = text.replace("10.x.y.", self.default_prefix())
        if "<its address>" in text:
            text = text.replace("<its address>", self.address_of(self.last_started))
        return text

    def default_prefix(self) -> str:
        name = self.names["ctbr0"]
        nets = {n["name"]: n for n in self.daemon.client.get("/1.0/networks")["networks"]}
        if name not in nets:  # made on first use; make it now, as a create with --net would
            self.daemon.client.request("POST", "/1.0/networks", {"name": name})
            nets = {n["name"]: n for n in self.daemon.client.get("/1.0/networks")["networks"]}
        subnet = ipaddress.ip_network(nets[name]["subnet"])
        return str(subnet.network_address).rsplit(".", 1)[0] + "."

    def address_of(self, name: str | None) -> str:
        assert name, "<its address> with no instance started before it"
        inst = self.daemon.instance(name)
        for nic in inst.get("nics") or []:
            for a in nic.get("addresses") or []:
                if ipaddress.ip_interface(a).version == 4:
                    return str(ipaddress.ip_interface(a).ip)
        raise AssertionError(f"{name} has no IPv4 address: {inst.get('nics')}")

    def sh(self, text: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """bash -c text in a process group of its own, all of which a timeout kills."""
        with subprocess.Popen(["bash", "-c", text], cwd=self.work, env=self.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def run(self, block: Block, cmd: Command) -> str | None:
        """Run one command; None if it did what the README says, else why not."""
        text = self.substitute(cmd.text)
        deadline = time.monotonic() + cmd.retry
        while True:
            try:
                r = self.sh(text, timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:   # bash and what it ran are killed by sh()
                return (f"{block.page}:{cmd.line} ({block.section}): $ {cmd.text}\n  still running after "
                        f"{COMMAND_TIMEOUT} s (interactive? mark it skip with the reason)")
            if r.returncode == 0 or cmd.mode is Mode.FAILS or time.monotonic() >= deadline:
                break
            time.sleep(2)
        where = f"{block.page}:{cmd.line} ({block.section}): $ {cmd.text}"
        if cmd.mode is Mode.FAILS:
            if r.returncode == 0:
                return f"{where}\n  should fail ({cmd.reason}) but exited 0:\n{r.stdout}"
            if len(r.stderr.strip().splitlines()) != 1:
                return f"{where}\n  a refusal is one line on stderr, got:\n{r.stderr}"
            return None
        if r.returncode != 0:
            return f"{where}\n  exit {r.returncode}\n  stdout: {r.stdout[-1500:]}\n  stderr: {r.stderr[-1500:]}"
        missing = missing_output(cmd.shown, r.stdout)
        if missing:
            return f"{where}\n  output lacks {missing}\n  got:\n{r.stdout}"
        m = re.match(r"ctctl (?:start|restart)(?: --\S+)* (\S+)", cmd.text)
        if m:
            self.last_started = m.group(1)
        return None


def daemon_default_network(d: Daemon) -> str:
    return re.search(r'default_network = "([^"]+)"', d.extra_config).group(1)  # type: ignore[union-attr]


BLOCKS = parse_all()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """One daemon with nothing built yet (the tour builds busybox itself) for all blocks, in
    page order: a later block uses what an earlier one made, as a reader's shell would."""
    needs_root()
    tmp = tmp_path_factory.mktemp("readme")
    d = Daemon(tmp / "state", tmp / "ctd.sock", f"ctd-test-{uuid.uuid4().hex[:8]}",
               extra_config=f'default_network = "rd{uuid.uuid4().hex[:4]}"\n')
    d.start()
    try:
        yield Session(d, tmp)
    finally:
        if d.proc and d.proc.poll() is not None:
            d.start()
        _teardown(d)


@pytest.mark.timeout(600)   # the debian-12 build (mmdebstrap) alone takes 30-120 s here
def block_id(b: Block) -> str:
    return f"{Path(b.page).stem}-{b.section.split(',')[0].replace(' ', '-')}-L{b.line}"


@pytest.mark.parametrize("block", BLOCKS, ids=[block_id(b) for b in BLOCKS])
def test_readme_block_runs(session: Session, block: Block) -> None:
    for line in block.setup:
        r = session.sh(session.substitute(line))
        assert r.returncode == 0, f"{block.page}:{block.line} setup {line!r} failed: {r.stderr}"
    failures: list[str] = []
    for cmd in block.commands:
        if cmd.mode is Mode.SKIP:
            print(f"not run: {block.page}:{cmd.line}: {cmd.text} ({cmd.reason})")
            continue
        began = time.monotonic()
        problem = session.run(block, cmd)
        print(f"{time.monotonic() - began:6.1f} s  {block.page}:{cmd.line}: {cmd.text[:70]}{'  FAILED' if problem else ''}")
        if problem:
            failures.append(problem)
    assert not failures, "\n\n".join(failures)
