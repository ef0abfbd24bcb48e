"""A malformed request is the client's fault, not an error of ctd.

aiohttp logs every request it cannot parse (a 64 KiB header line, 1000 headers, a broken
request line) with a traceback at ERROR on "aiohttp.server", then answers 400 and closes the
connection. Anyone who can reach the HTTPS port could so fill ctd's log with tracebacks and hide
real errors among them. This filter turns those records into one WARNING line naming the peer and
what was wrong; handler exceptions (real 500s) stay ERRORs with their traceback.
"""
from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

SERVER_LOGGER = "aiohttp.server"


class ClientErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            said = record.getMessage()
            record.msg, record.args = "%s: refused a malformed request (%s)", (said, str(exc.message)[:200])
            record.exc_info = record.exc_text = None
        return True


def install() -> None:
    """Once per process (idempotent): records are made on aiohttp's own logger."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())
