"""MCP over tern, without a subprocess (extra ``tern[mcp]``): ::

    async with tern.mcp.connect("alpha", "tools") as (read, write):
        async with mcp.ClientSession(read, write) as session:
            await session.initialize()

The stream carries newline-delimited JSON-RPC, as ``ternctl mcp expose NAME`` serves it: a
server exposed under a service name on the peer is reached by that name.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from .client import Client
from .service import service_port


@asynccontextmanager
async def connect(
    target: str,
    name: str,
    *,
    client: Client | None = None,
    home: str | os.PathLike[str] | None = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """Dials the MCP server exposed as ``name`` (a service name or a port) on ``target`` and
    yields the ``(read, write)`` streams ``mcp.ClientSession`` takes."""
    import anyio
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    client = client or Client(home)
    reader, writer = await client.dial(target, service_port(name))
    to_session, read = anyio.create_memory_object_stream[Any](0)
    write, from_session = anyio.create_memory_object_stream[Any](0)

    async def incoming() -> None:
        # Lines of any length (a tool result may be megabytes): split chunks ourselves.
        async with to_session:
            pending = b""
            while chunk := await reader.read(1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    try:
                        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except ValueError as e:
                        await to_session.send(e)
                        continue
                    await to_session.send(SessionMessage(message))

    async def outgoing() -> None:
        async with from_session:
            async for session_message in from_session:
                text = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                writer.write(text.encode() + b"\n")
                await writer.drain()
        # The session is done: half-close, so the server sees the end of its input.
        with suppress(OSError):
            writer.write_eof()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(incoming)
        tasks.start_soon(outgoing)
        try:
            yield read, write
        finally:
            tasks.cancel_scope.cancel()
            writer.close()
            with suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
