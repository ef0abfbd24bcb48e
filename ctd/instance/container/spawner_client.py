"""ctd's side of the spawner: fork it at start-up, then talk to it from the event loop."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ctd.errors import OperationFailed
from ctd.instance.container import spawner

if TYPE_CHECKING:
    from ctd.instance.container.spawner import Message, Wire

Reply = tuple["Message", list[int]]  # a message from the spawner and the fds that came with it
ExitCallback = Callable[[int, int], None]  # (pid, wait status)
StandbyCallback = Callable[[int], None]  # (pid of an init made ahead)


class SpawnerClient:
    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[Reply]] = {}
        self.on_exit: ExitCallback | None = None
        self.on_standby: StandbyCallback | None = None
        self.on_standby_gone: StandbyCallback | None = None
        self.alive = True
        # Requests the socket could not take yet. ctd never blocks on a send: the spawner may be
        # blocked sending replies that only ctd's event loop reads (200 starts at once did that).
        self._outbox: collections.deque[Reply] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def fork(cls, label: str = "", owner_base: int = 0) -> SpawnerClient:
        """Call before any thread exists: the child execs a fresh interpreter as the spawner.
        label (ctd's state dir) only shows in its command line, for ps and audits; owner_base
        is the first of the uids that own containers' user namespaces (0: root owns them)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                os.set_inheritable(theirs.fileno(), True)
                # -P: never import from the working directory (we are root)
                os.execv(sys.executable, [sys.executable, "-P", "-m", spawner.__name__,
                                          str(theirs.fileno()), str(parent), label, str(owner_base)])
            finally:
                os._exit(127)
        theirs.close()
        return cls(ours, pid)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            message, fds = spawner.recv(self.sock)
        except BlockingIOError:
            return
        except (ConnectionResetError, OSError):
            message, fds = None, []
        if message is None:
            self._lost()
            return
        if "event" in message:
            self._event(message)
            return
        queue = self._queues.get(message["id"])
        if queue is None:
            for fd in fds:
                os.close(fd)
            return
        queue.put_nowait((message, fds))
        if "helper_exit" in message:
            self._queues.pop(message["id"], None)

    def _event(self, message: Message) -> None:
        event, pid = message["event"], message.get("pid", 0)
        if event == "exit" and self.on_exit is not None:
            self.on_exit(pid, message.get("status", 0))
        elif event == "standby" and self.on_standby is not None:
            self.on_standby(pid)
        elif event == "standby_gone" and self.on_standby_gone is not None:
            self.on_standby_gone(pid)

    def _lost(self) -> None:
        self.alive = False
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        asyncio.get_running_loop().remove_writer(self.sock.fileno())
        while self._outbox:
            for fd in self._outbox.popleft()[1]:
                os.close(fd)
        for rid, queue in list(self._queues.items()):
            queue.put_nowait(({"id": rid, "error": "the spawner process died"}, []))
        self._queues.clear()

    def request(self, op: str, spec: Wire, fds: list[int], standby: int = 0) -> asyncio.Queue[Reply]:
        """Send a request (standby: spawn's staged init); replies for it arrive on the returned queue."""
        if not self.alive:
            raise OperationFailed("the spawner process is gone; restart ctd")
        rid = next(self._ids)
        queue: asyncio.Queue[Reply] = asyncio.Queue()
        self._queues[rid] = queue
        message: Message = {"id": rid, "op": op, "spec": spec}
        if standby:
            message["standby"] = standby
        if not self._outbox:
            try:
                spawner.send(self.sock, message, fds)
                return queue
            except BlockingIOError:
                pass
        # The caller closes its fds when this returns: the queued message keeps copies.
        self._outbox.append((message, [os.dup(fd) for fd in fds]))
        if len(self._outbox) == 1 and self._loop is not None:
            self._loop.add_writer(self.sock.fileno(), self._flush)
        return queue

    def notify(self, op: str) -> None:
        """A request without a reply; dropped if the socket cannot take it at once."""
        if self.alive and not self._outbox:
            try:
                spawner.send(self.sock, {"op": op})
            except OSError:
                pass

    def _flush(self) -> None:
        while self._outbox:
            message, fds = self._outbox[0]
            try:
                spawner.send(self.sock, message, fds)
            except BlockingIOError:
                return
            except OSError:
                break  # the spawner is gone: _readable sees it and fails the waiters
            self._outbox.popleft()
            for fd in fds:
                os.close(fd)
        if self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())

    def forget(self, queue: asyncio.Queue[Reply]) -> None:
        for rid, q in list(self._queues.items()):
            if q is queue:
                del self._queues[rid]

    def close(self) -> None:
        if self._loop is not None and self.sock.fileno() >= 0 and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
            self._loop.remove_writer(self.sock.fileno())
        self.alive = False
        self.sock.close()


async def first_reply(queue: asyncio.Queue[Reply], what: str) -> Reply:
    message, fds = await queue.get()
    if "error" in message:
        raise OperationFailed(f"{what}: {message['error']}")
    if "helper_exit" in message:
        raise OperationFailed(f"{what}: the helper process died (wait status {message['helper_exit']})")
    return message, fds
