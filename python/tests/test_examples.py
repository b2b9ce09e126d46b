"""The examples in python/examples/ run as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import tern
from conftest import REPO, Processes


def test_request_reply_gets_its_answer(lab: Processes) -> None:
    a, b = lab.pair()

    async def serve_one() -> None:
        async with tern.Client(b.home).listen(6000, open=True) as listener:
            ready.set()
            reader, writer = await listener.accept()
            request = json.loads(await reader.readline())
            reply = {"jsonrpc": "2.0", "id": request["id"], "result": "hello back"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()

    async def run() -> subprocess.CompletedProcess[str]:
        server = asyncio.create_task(serve_one())
        await ready.wait()
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(REPO / "python/examples/request_reply.py"), b.address, "6000"],
            env={**os.environ, "TERN_HOME": str(a.home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        await server
        return done

    ready = asyncio.Event()
    done = asyncio.run(run())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == "hello back"
