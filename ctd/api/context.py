"""What the API handlers reach: one object, set up by the daemon."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ctd.config import DaemonConfig
from ctd.events.bus import EventBus
from ctd.instance.autostart import Autostart
from ctd.instance.manager import InstanceManager
from ctd.instance.transfer import Transfers
from ctd.instance.vm.devices import VmDevices
from ctd.network.manager import NetworkManager
from ctd.operations import Operations
from ctd.project.manager import ProjectManager
from ctd.state import InstanceRecord, StateDB
from ctd.template.manager import TemplateManager

if TYPE_CHECKING:   # cluster mode only: a standalone ctd never loads ctd.cluster.node (nor etcd's client)
    from ctd.cluster.node import ClusterNode


# the instance of a route with {ref}, as the scoping read it (ctd/api/scoping.py)
INSTANCE = web.RequestKey("instance", InstanceRecord)


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
    events: EventBus = field(default_factory=EventBus)   # the daemon's: the manager's and operations' bus
    cluster: ClusterNode | None = None   # set by the daemon when ctd.toml names etcd_endpoints
    projects: ProjectManager = field(init=False)

    def __post_init__(self) -> None:
        self.projects = ProjectManager(self.db, self.instances)

    @functools.cached_property
    def vm_devices(self) -> VmDevices:
        """A VM's media and data disks (made on first use: tests of the API alone never ask)."""
        return VmDevices(self.instances, self.db, self.instances.kinds.vm)
