"""Shared helpers: the server under test (from CALLBOARD_URL / CALLBOARD_KEY, set by the Rust
integration test tests/python_client.rs that starts it), and a TCP proxy that can cut
connections."""

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

URL = os.environ.get("CALLBOARD_URL")
KEY = os.environ.get("CALLBOARD_KEY")

needs_server = pytest.mark.skipif(
    not URL,
    reason="CALLBOARD_URL is not set: run these through `cargo test --test python_client`, "
    "which starts a callboard server and points them at it",
)


def get_json(path: str):
    req = urllib.request.Request(URL + path, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class Proxy:
    """Forwards loopback TCP connections to the server; ``cut()`` aborts the open ones."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conns = []
        self.accepted = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, r, w) -> None:
        self.accepted += 1
        ur, uw = await asyncio.open_connection(self.host, self.port)
        self.conns.append((w, uw))

        async def pipe(src, dst):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    def cut(self) -> None:
        for w, uw in self.conns:
            w.transport.abort()
            uw.transport.abort()
        self.conns.clear()

    async def close(self) -> None:
        self.cut()
        self.server.close()
        await self.server.wait_closed()
