"""ctd's warnings and errors as events of type log.

A handler on the "ctd" logger turns every WARNING or worse into an event. The instance it is
about is the record's `instance` attribute (log.warning(..., extra={"instance": name})) or, for
the instance loggers (INSTANCE_LOGGERS, whose messages start "NAME: …"), the first argument of
a message that starts with it; the bus resolves that name to the instance's project, or, when no
instance has that name, makes the event host-wide (admins only). Other modules' first arguments
are not taken as names: a tarball member or a path a tenant chose could otherwise carry another
tenant's instance name and route the line to that tenant. Messages are capped in length.
"""

from __future__ import annotations

import logging

from ctd.events.bus import UNRESOLVED, EventBus
from ctd.events.model import Event, EventType

MAX_MESSAGE = 2000
INSTANCE_LOGGERS = ("ctd.instances", "ctd.instance", "ctd.autostart", "ctd.vm")


def _named_instance(record: logging.LogRecord) -> str | None:
    name = getattr(record, "instance", None)
    if isinstance(name, str):
        return name
    if not any(record.name == p or record.name.startswith(p + ".") for p in INSTANCE_LOGGERS):
        return None
    if not isinstance(record.msg, str) or not record.msg.startswith(("%s:", "%s ")):
        return None
    args = record.args if isinstance(record.args, tuple) else ()
    return args[0] if args and isinstance(args[0], str) else None


class EventLogHandler(logging.Handler):
    def __init__(self, bus: EventBus) -> None:
        super().__init__(logging.WARNING)
        self.bus = bus

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()[:MAX_MESSAGE]
        except Exception:  # noqa: BLE001 — a bad format string must not break logging
            message = str(record.msg)[:MAX_MESSAGE]
        name = _named_instance(record)
        meta = {"level": record.levelname.lower(), "logger": record.name, "message": message}
        self.bus.publish(Event(EventType.LOG, name, UNRESOLVED if name else None, meta))
