"""The HTTPS listener as an aiohttp site, with a bound on the TLS handshake.

aiohttp's TCPSite gives asyncio no ssl_handshake_timeout, so asyncio's default (60 s) applies: a
peer that connects and then sends nothing, or stops half-way through its ClientHello, keeps a
socket and its TLS state for a minute. Handshakes are asynchronous, so such peers never delay
other clients (tests/security/test_tls_slow_clients.py measures it), but a flood of them holds
file descriptors; this site drops them after HANDSHAKE_TIMEOUT instead.
"""
from __future__ import annotations

import asyncio
import ssl

from aiohttp import web

from ctd.remote.tls import HANDSHAKE_TIMEOUT, ListenAddress


class HttpsSite(web.BaseSite):
    """Like web.TCPSite with an SSL context, plus asyncio's ssl_handshake_timeout."""

    def __init__(self, runner: web.BaseRunner, address: ListenAddress, ssl_context: ssl.SSLContext,
                 backlog: int = 1024) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._address = address

    @property
    def name(self) -> str:
        return f"https://{self._address}"

    async def start(self) -> None:
        await super().start()   # registers the site with the runner, which closes it at cleanup
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._address.host, self._address.port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
