"""What the API handlers reach: one object, set up by the daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctd.config import DaemonConfig
from ctd.instance.autostart import Autostart
from ctd.instance.manager import InstanceManager
from ctd.network.manager import NetworkManager
from ctd.instance.transfer import Transfers
from ctd.operations import Operations
from ctd.state import StateDB
from ctd.template.manager import TemplateManager


@dataclass
class ApiContext:
    config: DaemonConfig
    db: StateDB
    instances: InstanceManager
    templates: TemplateManager
    operations: Operations
    network: NetworkManager
    transfers: Transfers
    info: dict[str, Any] = field(default_factory=dict)
    autostart: Autostart | None = None  # set by the daemon (tests of the API alone may leave it out)
