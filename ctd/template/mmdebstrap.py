"""Builds Debian templates with mmdebstrap, from the host's apt sources (or a given mirror)."""

from __future__ import annotations

import collections
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ctd.errors import InvalidRequest, OperationFailed
from ctd.template.recipe import Recipe


@dataclass
class BuildContext:
    """What a builder may use besides the recipe: a progress line, cancellation, a mirror."""

    progress: Callable[[str], None] = lambda line: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    mirror: str | None = None


# Hooks run by mmdebstrap on the finished root ($1): no ssh host keys (each container makes
# its own at first boot), an empty machine-id (ctd writes one per container), no apt caches.
CUSTOMIZE = (
    'rm -f "$1"/etc/ssh/ssh_host_*',
    ': > "$1"/etc/machine-id',
    'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*_Packages',
)


def build(recipe: Recipe, rootfs: Path, ctx: BuildContext) -> None:
    if shutil.which("mmdebstrap") is None:
        raise OperationFailed("mmdebstrap is not installed: apt-get install mmdebstrap")
    if not recipe.release:
        raise InvalidRequest(f"template recipe {recipe.name}: release is missing")
    argv = ["mmdebstrap", f"--variant={recipe.variant}", "--mode=root", "--format=directory"]
    if recipe.packages:
        argv.append("--include=" + ",".join(recipe.packages))
    argv += [f"--customize-hook={hook}" for hook in CUSTOMIZE]
    argv += [recipe.release, str(rootfs)]
    if ctx.mirror:
        argv.append(ctx.mirror)
    tail: collections.deque[str] = collections.deque(maxlen=12)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    reader = threading.Thread(target=_pump, args=(proc, tail, ctx), daemon=True)
    reader.start()
    while proc.poll() is None:
        if ctx.cancelled.is_set():
            proc.kill()
            proc.wait()
            raise OperationFailed(f"building {recipe.name} was cancelled")
        time.sleep(0.2)
    reader.join(5)
    if proc.returncode != 0:
        text = "\n".join(tail)
        hint = ""
        if "Release" in text and ("404" in text or "does not have a Release file" in text or "no such" in text.lower()):
            hint = f" (does the mirror serve '{recipe.release}'? give another with --mirror)"
        raise OperationFailed(f"mmdebstrap failed for {recipe.name}{hint}:\n{text}")
    if recipe.files_dir is not None:
        result = subprocess.run(["cp", "-a", "--", f"{recipe.files_dir}/.", str(rootfs)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise OperationFailed(f"copying {recipe.files_dir} into the template failed: {result.stderr.strip()}")


def _pump(proc: subprocess.Popen, tail: collections.deque, ctx: BuildContext) -> None:  # type: ignore[type-arg]
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            tail.append(line)
            ctx.progress(line)
