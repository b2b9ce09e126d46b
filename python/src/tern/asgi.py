"""Serving an ASGI app (an a2a-sdk agent, a Starlette or FastAPI app) to tern peers on a
virtual port, with no TCP listener: ::

    await tern.asgi.serve(app, 2000, open=True)

Each tern stream is one HTTP/1.1 connection, run by uvicorn's protocol; the request's
``scope["client"]`` is the verified tern address of the peer and its port. Needs uvicorn.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from . import _frames
from .client import Client
from .errors import DaemonNotRunningError, ProtocolError


async def serve(
    app: Any,
    port: int,
    *,
    open: bool = False,
    client: Client | None = None,
    home: str | os.PathLike[str] | None = None,
    log_level: str = "warning",
) -> None:
    """Serves ``app`` on ``port`` until cancelled. ``open`` admits every verified peer;
    otherwise trusted ones only."""
    import uvicorn
    from uvicorn.server import ServerState

    client = client or Client(home)
    config = uvicorn.Config(app, log_level=log_level, lifespan="off", proxy_headers=False)
    config.load()
    state = ServerState()
    protocol_class: Any = config.http_protocol_class
    loop = asyncio.get_running_loop()
    async with client.listen(port, open=open):
        try:
            while True:
                sock, info = await _accept(client, port)
                peer = (str(info.get("peer", "")), int(info.get("remote_port", 0)))
                protocol = protocol_class(config=config, server_state=state, app_state={})
                protocol.app = _from_peer(protocol.app, peer)
                await loop.connect_accepted_socket(lambda: protocol, sock)
        finally:
            # Stopped: the connections it was serving end with it.
            for connection in list(state.connections):
                connection.shutdown()


def _from_peer(app: Any, peer: tuple[str, int]) -> Any:
    async def with_peer(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("type") in ("http", "websocket"):
            scope = {**scope, "client": peer}
        return await app(scope, receive, send)

    return with_peer


async def _accept(client: Client, port: int) -> tuple[socket.socket, dict[str, Any]]:
    """A raw socket carrying the next stream to ``port``, and the accept's answer."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            await loop.sock_connect(sock, str(client.socket))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise DaemonNotRunningError(str(client.socket), str(client.home)) from e
        await loop.sock_sendall(sock, _frames.encode({"op": "accept", "port": port}))
        header = await _exactly(loop, sock, 4)
        info = _frames.answer(_frames.decode(await _exactly(loop, sock, _frames.body_len(header))))
    except BaseException:
        sock.close()
        raise
    return sock, info


async def _exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    # Exactly n bytes: what follows the answer is the stream's, for uvicorn.
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ProtocolError("the daemon closed the connection without answering")
        data += chunk
    return data
