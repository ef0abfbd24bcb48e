"""ctd's side of the spawner: fork it at start-up, then talk to it from the event loop."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import Callable

from ctd.errors import OperationFailed
from ctd.instance.container import spawner

ExitCallback = Callable[[int, int], None]  # (pid, wait status)


class SpawnerClient:
    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[tuple[dict, list[int]]]] = {}
        self.on_exit: ExitCallback | None = None
        self.alive = True

    @classmethod
    def fork(cls) -> SpawnerClient:
        """Call before any thread exists: the child becomes the spawner."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            try:
                spawner.serve(theirs, parent)
            finally:
                os._exit(0)
        theirs.close()
        return cls(ours, pid)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            message, fds = spawner.recv(self.sock)
        except (ConnectionResetError, OSError):
            message, fds = None, []
        if message is None:
            self._lost()
            return
        if "event" in message:
            if message["event"] == "exit" and self.on_exit:
                self.on_exit(message["pid"], message["status"])
            return
        queue = self._queues.get(message["id"])
        if queue is None:
            for fd in fds:
                os.close(fd)
            return
        queue.put_nowait((message, fds))
        if "helper_exit" in message:
            self._queues.pop(message["id"], None)

    def _lost(self) -> None:
        self.alive = False
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for rid, queue in list(self._queues.items()):
            queue.put_nowait(({"id": rid, "error": "the spawner process died"}, []))
        self._queues.clear()

    def request(self, op: str, spec: dict, fds: list[int]) -> asyncio.Queue[tuple[dict, list[int]]]:
        """Send a request; replies for it arrive on the returned queue."""
        if not self.alive:
            raise OperationFailed("the spawner process is gone; restart ctd")
        rid = next(self._ids)
        queue: asyncio.Queue[tuple[dict, list[int]]] = asyncio.Queue()
        self._queues[rid] = queue
        spawner.send(self.sock, {"id": rid, "op": op, "spec": spec}, fds)
        return queue

    def forget(self, queue: asyncio.Queue) -> None:
        for rid, q in list(self._queues.items()):
            if q is queue:
                del self._queues[rid]

    def close(self) -> None:
        self.sock.close()


async def first_reply(queue: asyncio.Queue[tuple[dict, list[int]]], what: str) -> tuple[dict, list[int]]:
    message, fds = await queue.get()
    if "error" in message:
        raise OperationFailed(f"{what}: {message['error']}")
    if "helper_exit" in message:
        raise OperationFailed(f"{what}: the helper process died (wait status {message['helper_exit']})")
    return message, fds
