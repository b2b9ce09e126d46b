"""HTTP over tern, for httpx (and so for A2A clients): ::

    async with httpx.AsyncClient(transport=tern.http.Transport()) as http:
        card = await http.get("http://alpha:2000/.well-known/agent-card.json")

The URL's host is a tern name, or an address with dashes for its colons
(``http://841e-47a8-865a:2000/``: URLs cannot hold the colon form, and httpx refuses it in
brackets); its port is the virtual port. (A name of that shape is reached through an alias.) Each HTTP connection is one tern stream, already end-to-end
encrypted and authenticated, so the scheme is ``http``. Responses stream as they arrive
(server-sent events are not buffered). Needs httpx (and its httpcore).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from .client import Client
from .errors import TernError


_DASHED_ADDRESS = re.compile(r"^[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}$")


def target_of(host: str) -> str:
    """The tern target a URL's host stands for: a dashed address becomes an address."""
    return host.replace("-", ":") if _DASHED_ADDRESS.match(host) else host


def url_host(address: str) -> str:
    """How an address is written as a URL's host (``a1b2:c3d4:e5f6`` → ``a1b2-c3d4-e5f6``)."""
    return address.replace(":", "-")


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.read(max_bytes), timeout)
        except asyncio.TimeoutError as e:
            raise httpcore.ReadTimeout(f"no data within {timeout} s") from e
        except OSError as e:
            raise httpcore.ReadError(str(e)) from e

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._writer.write(buffer)
            await asyncio.wait_for(self._writer.drain(), timeout)
        except asyncio.TimeoutError as e:
            raise httpcore.WriteTimeout(f"could not write within {timeout} s") from e
        except OSError as e:
            raise httpcore.WriteError(str(e)) from e

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError(
            "tern streams are end-to-end encrypted already: use http://, not https://"
        )

    def get_extra_info(self, info: str) -> Any:
        # httpcore asks whether an idle connection has something to read (it was closed).
        if info == "is_readable":
            return self._reader.at_eof()
        return None


class _Backend(httpcore.AsyncNetworkBackend):
    def __init__(self, client: Client) -> None:
        self._client = client

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            dialled = self._client.dial(target_of(host), port)
            reader, writer = await asyncio.wait_for(dialled, timeout)
        except asyncio.TimeoutError as e:
            raise httpcore.ConnectTimeout(f"could not reach {host}:{port} within {timeout} s") from e
        except TernError as e:
            # httpx's retries and its ConnectError handlers apply.
            raise httpcore.ConnectError(str(e)) from e
        return _Stream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Transport(httpx.AsyncHTTPTransport):
    """An httpx transport whose connections are tern streams: ``host`` is the peer's name or
    address, ``port`` its virtual port. Takes httpx's transport options (``limits``,
    ``retries``)."""

    def __init__(
        self,
        client: Client | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
        retries: int = 0,
    ) -> None:
        super().__init__(limits=limits, retries=retries)
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=_Backend(client or Client(home)),
        )
