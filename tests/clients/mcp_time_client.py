"""MCP client (official Python SDK) that reaches `mcp-server-time` through tern.

Usage: mcp_time_client.py TERNCTL HOME TARGET NAME
Spawns `TERNCTL --home HOME mcp connect TARGET NAME` as its stdio server, lists the tools,
calls get_current_time and prints one JSON line with what it saw.
"""
import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main() -> None:
    ternctl, home, target, name = sys.argv[1:5]
    params = StdioServerParameters(
        command=ternctl, args=["--home", home, "mcp", "connect", target, name]
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            result = await session.call_tool("get_current_time", {"timezone": "UTC"})
            print(json.dumps({
                "tools": sorted(t.name for t in tools.tools),
                "text": result.content[0].text,
                "is_error": bool(result.is_error),
            }))


asyncio.run(main())
