"""Real Vagrant against a test's ctd: the plugin built from vagrant-ctd/ and installed offline,
with every file of Vagrant's under the test's directory (VAGRANT_HOME), none in /root."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
PLUGIN = REPO / "vagrant-ctd"


@dataclass
class Vagrant:
    home: Path   # VAGRANT_HOME: plugins and boxes
    socket: Path  # the test daemon's socket (CTD_SOCKET)
    launcher: tuple[str, ...] = ()  # e.g. nsenter --net=…: Vagrant in the network namespace of a test's ctd

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "VAGRANT_HOME": str(self.home), "CTD_SOCKET": str(self.socket),
                "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_DISABLE_VERSION_CHECK": "1",
                "VAGRANT_NO_COLOR": "1", "VAGRANT_DEFAULT_PROVIDER": "ctd", **extra}

    def run(self, cwd: Path, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.launcher, "vagrant", *args], cwd=cwd, env=self.env(**extra), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, cwd: Path, *args: str, **kw) -> str:  # type: ignore[no-untyped-def]
        r = self.run(cwd, *args, **kw)
        assert r.returncode == 0, f"vagrant {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r.stdout


def install(base: Path, socket: Path, plugin: Path = PLUGIN) -> Vagrant:
    """Build the gem (from plugin: another checkout's vagrant-ctd/ for a bench's before/after) and
    install it (no network: --plugin-clean-sources)."""
    base.mkdir(parents=True, exist_ok=True)
    gem = base / "vagrant-ctd.gem"
    subprocess.run(["gem", "build", "vagrant-ctd.gemspec", f"--output={gem}"], cwd=plugin, check=True,
                   capture_output=True, timeout=120)
    v = Vagrant(home=base / "vagrant.d", socket=socket)
    v.ok(base, "plugin", "install", "--plugin-clean-sources", str(gem), timeout=300)
    return v
