"""A real server in the test's nursery, and a line client on a real loopback socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import trio

from karma.config import Config
from karma.observability.logs import Logger
from karma.server.app import serve

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "conformance" / "golden"


@attrs.define
class Running:
    port: int
    config: Config
    shutdown: trio.Event


async def start_server(nursery: trio.Nursery, directory: Path, **options: Any) -> Running:
    settings: dict[str, Any] = {
        "bind": "127.0.0.1",
        "port": 0,
        "directory": str(directory),
        "wal_fsync": False,
        "log": False,
    }
    settings.update(options)
    config = Config(**settings)
    shutdown = trio.Event()

    async def run(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        await serve(config, log=Logger(enabled=False), shutdown=shutdown, task_status=task_status)

    listeners: list[trio.SocketListener] = await nursery.start(run)
    return Running(listeners[0].socket.getsockname()[1], config, shutdown)


class LineClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> LineClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        await self.send_raw(json.dumps({"v": 2, "op": op, **fields}).encode() + b"\n")
        return await self.reply()

    async def reply(self) -> dict[str, Any]:
        with trio.fail_after(10):
            line = await self.line()
        assert line is not None, "connection closed"
        assert line.endswith(b"\r"), "answers end in \\r\\n"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def aclose(self) -> None:
        await self.stream.aclose()
