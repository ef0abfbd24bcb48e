from ctd.state.db import StateDB
from ctd.state.records import InstanceRecord, InstanceType, PowerState, TemplateRecord

__all__ = ["StateDB", "InstanceRecord", "InstanceType", "PowerState", "TemplateRecord"]
