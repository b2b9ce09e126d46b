"""MCP over tern, without a subprocess on either side (extra ``tern[mcp]``).

A client session::

    async with tern.mcp.connect("alpha", "tools") as (read, write):
        async with mcp.ClientSession(read, write) as session:
            await session.initialize()

and a server for tern peers (an ``MCPServer``/FastMCP or a low-level ``Server``)::

    await tern.mcp.serve(server, "tools")

Streams carry newline-delimited JSON-RPC, as ``ternctl mcp expose NAME`` serves it, so each
side also talks to ternctl's ``mcp expose`` / ``mcp connect``. A service name stands for the
same port on both ends (SPEC.md §7.1).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from .client import Client
from .service import service_port

logger = logging.getLogger(__name__)


@asynccontextmanager
async def _session_streams(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> AsyncIterator[tuple[Any, Any]]:
    """The ``(read, write)`` memory streams an MCP session takes, over one tern stream."""
    import anyio
    import mcp_types as types
    from mcp.shared.message import SessionMessage

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
        # The session is done: half-close, so the other side sees the end of its input.
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
    client = client or Client(home)
    reader, writer = await client.dial(target, service_port(name))
    async with _session_streams(reader, writer) as streams:
        yield streams


async def serve(
    server: Any,
    name: str,
    *,
    open: bool = False,
    client: Client | None = None,
    home: str | os.PathLike[str] | None = None,
) -> None:
    """Serves ``server`` to tern peers on the service port ``name`` until cancelled, one MCP
    session per stream. ``open`` admits every verified peer; otherwise trusted ones only."""
    import anyio

    # MCPServer (and FastMCP before it) wraps the low-level server that runs sessions.
    lowlevel = getattr(server, "_lowlevel_server", None) or getattr(server, "_mcp_server", server)
    client = client or Client(home)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One peer's session failing (it vanished mid-reply, say) leaves the others serving.
        try:
            async with _session_streams(reader, writer) as (read, write):
                await lowlevel.run(read, write, lowlevel.create_initialization_options())
        except Exception:
            logger.exception("an MCP session over tern failed")

    async with client.listen(service_port(name), open=open) as listener:
        async with anyio.create_task_group() as tasks:
            async for stream in listener:
                tasks.start_soon(session, stream.reader, stream.writer)
