"""The official MCP SDK's ClientSession over tern.mcp, with no subprocess on the client
side: tools, a server-to-client sampling request, and a result over 4 MiB. The server is
@modelcontextprotocol/server-everything behind `ternctl mcp expose`."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

import tern
import tern.mcp
from conftest import REPO, Processes, binary

mcp = pytest.importorskip("mcp")
from mcp import types  # noqa: E402

SERVER = REPO / "tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"


def expose(lab: Processes, home: Path) -> None:
    if not SERVER.exists():
        pytest.fail(f"{SERVER} is missing: run `npm ci` in tests/node (.ci/run does this)")
    exposed = lab.spawn(
        binary("ternctl"), "--home", str(home), "mcp", "expose", "everything", "--",
        "node", str(SERVER), "stdio",
        stderr=subprocess.PIPE,
    )
    assert exposed.stderr is not None
    for line in exposed.stderr:
        if line.startswith(b"ready"):
            return
    pytest.fail("mcp expose never became ready")


def test_an_mcp_client_session_runs_over_tern_mcp(lab: Processes) -> None:
    a, b = lab.pair()
    expose(lab, a.home)
    tern.SyncClient(a.home).trust(b.address)
    asked: list[str] = []

    async def sampling(context: Any, params: Any) -> Any:
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled over tern"),
            model="tern-test-model",
            stop_reason="endTurn",
        )

    async def run() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        client = tern.Client(b.home)
        async with tern.mcp.connect(a.address, "everything", client=client) as (read, write):
            async with mcp.ClientSession(read, write, sampling_callback=sampling) as session:
                await session.initialize()
                seen["tools"] = {t.name for t in (await session.list_tools()).tools}
                sampled = await session.call_tool(
                    "trigger-sampling-request", {"prompt": "hi", "maxTokens": 8}
                )
                seen["sampled"] = " ".join(getattr(c, "text", "") for c in sampled.content)
                big = "tern" * (5 << 18)  # 5 MiB
                echoed = await session.call_tool("echo", {"message": big})
                seen["echo"] = echoed.content[0].text == f"Echo: {big}"
        return seen

    seen = asyncio.run(asyncio.wait_for(run(), 120))
    assert "echo" in seen["tools"], seen
    assert asked == ["sampling"]
    assert "sampled over tern" in seen["sampled"]
    assert seen["echo"] is True


def test_an_mcp_server_serves_tern_peers_with_tern_mcp_serve(lab: Processes) -> None:
    a, b = lab.pair()
    from mcp.server import MCPServer

    server = MCPServer("tern-test")

    @server.tool()
    def add(x: int, y: int) -> int:
        """Adds two numbers."""
        return x + y

    @server.tool()
    def blob(mib: int) -> str:
        """A text of `mib` MiB."""
        return "b" * (mib << 20)

    async def run() -> tuple[set[str], str, int]:
        serving = asyncio.create_task(tern.mcp.serve(server, "tools", open=True, client=tern.Client(a.home)))
        await asyncio.sleep(0.5)
        try:
            async with tern.mcp.connect(a.address, "tools", client=tern.Client(b.home)) as (read, write):
                async with mcp.ClientSession(read, write) as session:
                    await session.initialize()
                    tools = {t.name for t in (await session.list_tools()).tools}
                    added = await session.call_tool("add", {"x": 2, "y": 40})
                    big = await session.call_tool("blob", {"mib": 5})
                    return tools, added.content[0].text, len(big.content[0].text)
        finally:
            serving.cancel()

    tools, added, size = asyncio.run(asyncio.wait_for(run(), 120))
    assert {"add", "blob"} <= tools
    assert added == "42"
    assert size == 5 << 20
