"""MCP client (official Python SDK) that exercises server-to-client requests through tern.

Usage: mcp_everything_client.py TERNCTL HOME TARGET NAME
Spawns `TERNCTL --home HOME mcp connect TARGET NAME` (an `@modelcontextprotocol/server-everything`
behind `mcp expose`), answers sampling, elicitation and roots requests from the server, follows
progress notifications, cancels a call, and prints one JSON line with what it saw.
"""
import asyncio
import json
import sys

import anyio
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

asked = {"sampling": 0, "elicitation": 0, "roots": 0}


async def sampling(context, params):
    asked["sampling"] += 1
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="sampled by the test client"),
        model="tern-test-model",
        stop_reason="endTurn",
    )


async def elicitation(context, params):
    asked["elicitation"] += 1
    return types.ElicitResult(action="accept", content={"name": "Ada Lovelace"})


async def roots(context):
    asked["roots"] += 1
    return types.ListRootsResult(roots=[types.Root(uri="file:///tmp/tern-root", name="tern-root")])


def text(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "text", None))


async def main() -> None:
    ternctl, home, target, name = sys.argv[1:5]
    params = StdioServerParameters(command=ternctl, args=["--home", home, "mcp", "connect", target, name])
    seen = {}
    progress = []

    async def on_progress(value, total, message):
        progress.append(value)

    async with stdio_client(params) as (read, write):
        async with ClientSession(
            read, write,
            sampling_callback=sampling,
            elicitation_callback=elicitation,
            list_roots_callback=roots,
        ) as session:
            await session.initialize()
            seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
            seen["sampling"] = text(await session.call_tool("trigger-sampling-request", {"prompt": "hello", "maxTokens": 16}))
            seen["elicitation"] = text(await session.call_tool("trigger-elicitation-request", {}))
            seen["roots"] = text(await session.call_tool("get-roots-list", {}))
            seen["long"] = text(await session.call_tool(
                "trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress))
            seen["progress"] = progress
            cancelled = True
            with anyio.move_on_after(0.5):
                await session.call_tool("trigger-long-running-operation", {"duration": 5, "steps": 5})
                cancelled = False
            seen["cancelled"] = cancelled
            # Non-ASCII, id reuse after cancellation, and a large argument all pass verbatim.
            big = "ü€𝄞" * 200_000
            seen["echo"] = text(await session.call_tool("echo", {"message": big})) == f"Echo: {big}"
    seen["asked"] = asked
    print(json.dumps(seen))


asyncio.run(main())
