"""The storage driver interface: where templates and instance roots live."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StorageInfo:
    driver: str
    path: str
    usable: bool
    reason: str = ""


class StorageDriver(ABC):
    name: str

    def __init__(self, root: Path) -> None:
        self.root = root

    def template_path(self, template: str) -> Path:
        return self.root / "templates" / template

    def instance_path(self, name: str) -> Path:
        return self.root / "instances" / name

    def rootfs(self, name: str) -> Path:
        return self.instance_path(name) / "rootfs"

    def prepare(self) -> None:
        # Instance roots hold files owned by real host ids (the idmapped mount keeps disk ids),
        # setuid ones included: no host user but root may ever walk into them.
        for sub in ("templates", "instances"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for path in (self.root, self.root / "templates", self.root / "instances"):
            path.chmod(0o700)

    @abstractmethod
    def info(self) -> StorageInfo: ...

    @abstractmethod
    def create_instance(self, name: str, template: str) -> Path:
        """A new writable root for instance name from template; returns its rootfs path."""

    @abstractmethod
    def delete_instance(self, name: str) -> None:
        """Remove everything of name; a missing instance is not an error."""

    @abstractmethod
    def new_template_dir(self, template: str) -> Path:
        """An empty staging directory to build template into (see commit_template)."""

    @abstractmethod
    def commit_template(self, template: str, staging: Path) -> Path:
        """Make staging the template (atomically replacing nothing: the name must be free)."""

    @abstractmethod
    def delete_template(self, template: str) -> None: ...

    def instance_names(self) -> list[str]:
        base = self.root / "instances"
        return sorted(p.name for p in base.iterdir()) if base.exists() else []
