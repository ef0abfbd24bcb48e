"""The Vagrant plugin's exec client (vagrant-ctd/lib/vagrant-ctd/exec.rb: the WebSocket side the
plugin writes the machine's key with) against an aiohttp server that speaks ctd's exec protocol:
stdin in binary frames then {"type": "eof"}, stdout/stderr back with their channel byte (frames
of every length class), the exit code last; an error answer is ctd's one-line message."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

LIB = Path(__file__).resolve().parents[2] / "vagrant-ctd" / "lib"
RUBY = """
$LOAD_PATH.unshift ARGV[0]
module Vagrant; module Errors; class VagrantError < StandardError; end; end; end
module Kernel; alias_method :real_require, :require; def require(n) n == "vagrant" || real_require(n) end; end
require "vagrant-ctd/client"
c = VagrantPlugins::Ctd::Client.new(socket: ARGV[1])
r = c.exec("web", ["sh", "-c", "a b&c=d", "\\u00fc"], stdin: "x" * 70_000)
puts JSON.generate([r.code, r.stdout.force_encoding("UTF-8"), r.stderr.bytesize])
begin
  c.exec("web", ["refuse"])
rescue VagrantPlugins::Ctd::CtdError => e
  puts e.error_message
end
"""


async def exec_ws(request: web.Request) -> web.StreamResponse:
    cmd = request.query.getall("cmd")
    if cmd == ["refuse"]:
        return web.json_response({"error": "web is not running; start it first"}, status=409)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    stdin = b""
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            stdin += msg.data
        elif msg.type == WSMsgType.TEXT and json.loads(msg.data) == {"type": "eof"}:
            break
    await ws.ping()
    await ws.send_bytes(b"\x01" + json.dumps([cmd, len(stdin)]).encode())
    await ws.send_bytes(b"\x02" + b"e" * 70_000)   # a 64-bit length
    await ws.send_bytes(b"\x02" + b"e" * 300)      # a 16-bit one
    await ws.send_str(json.dumps({"type": "exit", "code": 7}))
    await ws.close()
    return ws


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "ctd.sock"
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/1.0/instances/{ref}/exec", exec_ws)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.UnixSite(runner, str(sock)).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield sock
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby not installed (Debian package: ruby)")
def test_exec_client_speaks_ctds_exec_protocol(server: Path) -> None:
    r = subprocess.run(["ruby", "-e", RUBY, str(LIB), str(server)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    code, out, err_bytes = json.loads(first)
    assert code == 7 and err_bytes == 70_300
    assert json.loads(out) == [["sh", "-c", "a b&c=d", "\u00fc"], 70_000]
    assert second == "ctd: web is not running; start it first"
