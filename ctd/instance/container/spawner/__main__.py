"""`python -P -m ctd.instance.container.spawner SOCKET_FD PARENT_PID LABEL [OWNER_BASE]`, exec'd by
ctd: a fresh interpreter with only the spawner's imports forks far faster than a copy of ctd
(26 MB resident with aiohttp and pyroute2), and every start forks twice. LABEL (ctd's state dir)
only shows in the command line; OWNER_BASE is the first uid that owns containers' user
namespaces (0: root owns them)."""

from __future__ import annotations

import socket
import sys

from ctd.instance.container.spawner.server import serve


def main(argv: list[str]) -> None:
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    serve(sock, int(argv[1]), int(argv[3]) if len(argv) > 3 else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
