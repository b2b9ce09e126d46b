"""tern: agents in Python on the tern overlay, through a running ``ternd``'s local API.

Pure Python, asyncio first, no dependencies::

    import tern

    client = tern.Client()                      # TERN_HOME, else ~/.local/share/tern
    print((await client.status())["address"])
    reader, writer = await client.dial("alpha", 2000)
    async with client.listen(2000, open=True) as listener:
        async for stream in listener:
            reader, writer = stream             # stream.peer: the verified address

``tern.SyncClient`` is the blocking facade; ``tern.mcp.connect`` runs an MCP client session
over a tern stream (extra ``tern[mcp]``). Every error derives from :class:`TernError`.
"""

from __future__ import annotations

from . import mcp
from .client import Client, Datagram, Listener, Pending, Stream
from .errors import (
    ApiError,
    BadAddressError,
    BadRequestError,
    DaemonNotRunningError,
    NameTakenError,
    NotDeliveredError,
    NotFoundError,
    PinMismatchError,
    ProtocolError,
    RefusedError,
    StillRunningError,
    TernError,
    UnreachableError,
)
from .service import service_port
from .sync import SyncClient, SyncListener, SyncStream

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "BadAddressError",
    "BadRequestError",
    "Client",
    "DaemonNotRunningError",
    "Datagram",
    "Listener",
    "NameTakenError",
    "NotDeliveredError",
    "NotFoundError",
    "Pending",
    "PinMismatchError",
    "ProtocolError",
    "RefusedError",
    "StillRunningError",
    "Stream",
    "SyncClient",
    "SyncListener",
    "SyncStream",
    "TernError",
    "UnreachableError",
    "mcp",
    "service_port",
]
