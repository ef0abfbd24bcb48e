"""ctd's state: StateDB (SQLite) and the typed records it stores."""

from ctd.state.db import StateDB
from ctd.state.records import (
    InstanceRecord,
    InstanceType,
    NetworkRecord,
    NicMode,
    NicRecord,
    PowerState,
    TemplateRecord,
)

__all__ = ["StateDB", "InstanceRecord", "InstanceType", "NetworkRecord", "NicMode", "NicRecord", "PowerState",
           "TemplateRecord"]
