"""The asyncio client of a running ternd's local API (SPEC.md §10), over ``HOME/ternd.sock``."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from . import _frames
from .errors import DaemonNotRunningError, ProtocolError, TernError

_BUFFER = 1 << 20


class Stream(tuple[asyncio.StreamReader, asyncio.StreamWriter]):
    """An overlay stream: unpacks as ``(reader, writer)``; ``peer`` is the verified address
    of the other end, ``stream`` its id (for :meth:`Client.reset` and :meth:`Client.outcome`).
    ``writer.write_eof()`` half-closes it (the peer reads end of stream)."""

    peer: str
    stream: int
    port: int

    def __new__(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]
    ) -> Stream:
        made = super().__new__(cls, (reader, writer))
        made.peer = str(info.get("peer", ""))
        made.stream = int(info.get("stream", 0))
        made.port = int(info.get("port", 0))
        return made

    @property
    def reader(self) -> asyncio.StreamReader:
        return self[0]

    @property
    def writer(self) -> asyncio.StreamWriter:
        return self[1]


class Pending:
    """A stream waiting for a socket: :meth:`attach` hands the daemon a connected stream
    socket (a TCP connection, say) and the daemon carries the bytes between it and the
    overlay stream itself, with no hop through this process. ``peer`` and ``stream`` as for
    :class:`Stream`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]
    ) -> None:
        self._reader, self._writer = reader, writer
        self.peer = str(info.get("peer", ""))
        self.stream = int(info.get("stream", 0))
        self.port = int(info.get("port", 0))

    async def attach(self, sock: socket.socket) -> dict[str, Any]:
        """Hands ``sock`` over and waits until the stream has ended; returns its outcome
        (``{"end": "clean"}``, or how it broke, as :meth:`Client.outcome` tells). ``sock`` is
        closed when this returns: with a TCP reset, unless the stream ended cleanly, so the
        local application sees a failure rather than an end. Leaving (cancelling) breaks
        the stream."""
        outcome: dict[str, Any] | None = None
        try:
            await self._send_socket(sock)
            outcome = _frames.answer(await _read_frame(self._reader))
            return outcome if isinstance(outcome, dict) else {}
        finally:
            if not (isinstance(outcome, dict) and outcome.get("end") == "clean"):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass  # not TCP: nothing to reset
            sock.close()
            self._writer.close()

    async def _send_socket(self, sock: socket.socket) -> None:
        connection = self._writer.get_extra_info("socket")
        if connection is None:
            raise ProtocolError("the connection to ternd has no socket to pass a descriptor on")
        # asyncio's wrapper of its socket offers no sendmsg: a socket over a copy of the
        # descriptor does.
        with socket.socket(fileno=os.dup(connection.fileno())) as unix:
            while True:
                try:
                    socket.send_fds(unix, [b"\0"], [sock.fileno()])
                    return
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                except OSError as e:
                    raise ProtocolError(f"could not hand the socket to ternd: {e}") from e


@dataclass(frozen=True)
class Datagram:
    """A datagram that arrived at a listened port."""

    peer: str
    source_port: int
    data: bytes


class Client:
    """A client of the ternd whose home is ``home`` (else ``$TERN_HOME``, else
    ``~/.local/share/tern``, as for ternctl). Every request opens its own connection, so one
    client serves many tasks at once."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home: Path = _frames.resolve_home(home)
        self.socket: Path = self.home / "ternd.sock"

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(self.socket), limit=_BUFFER)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise DaemonNotRunningError(str(self.socket), str(self.home)) from e
        except PermissionError as e:
            raise TernError(
                f"not allowed to use {self.socket}: run as the user that runs ternd"
            ) from e
        except OSError as e:
            raise TernError(f"cannot connect to ternd at {self.socket}: {e}") from e

    @staticmethod
    async def _exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]
    ) -> Any:
        try:
            writer.write(_frames.encode(request))
            await writer.drain()
            return _frames.answer(await _read_frame(reader))
        except OSError as e:
            raise ProtocolError(f"the connection to ternd broke: {e}") from e

    async def request(self, op: str, **fields: Any) -> Any:
        """Sends one request (``{"op": op, **fields}``) on a connection of its own and
        returns the answer's ``data``; a refusal raises an :class:`~tern.ApiError`."""
        reader, writer = await self._connect()
        try:
            return await self._exchange(reader, writer, {"op": op, **fields})
        finally:
            writer.close()

    async def _pages(self, op: str, key: str, **fields: Any) -> tuple[list[Any], dict[str, Any]]:
        items: list[Any] = []
        after = None
        while True:
            page = await self.request(op, after=after, **fields)
            items.extend(page.get(key, []))
            after = page.get("next")
            if after is None:
                return items, page

    async def status(self) -> dict[str, Any]:
        """The node's address, public key, endpoints, registration, peers and limits."""
        result: dict[str, Any] = await self.request("status")
        return result

    async def peers(self) -> list[dict[str, Any]]:
        """Every connected peer (all pages): address, path, remote, rtt_ms, bytes, since."""
        peers, _ = await self._pages("peers", "peers")
        return peers

    async def find(self, target: str) -> dict[str, Any]:
        """The record an address or name leads to, and how (``via``, ``resolved``)."""
        result: dict[str, Any] = await self.request("find", target=target)
        return result

    async def ping(self, target: str) -> dict[str, Any]:
        """Reaches ``target`` (connecting if need be) and measures the round trip."""
        result: dict[str, Any] = await self.request("ping", target=target)
        return result

    async def trust(self, address: str) -> bool:
        """Lets ``address`` open streams to this node's private ports; whether it changed."""
        return bool((await self.request("trust_add", address=address))["changed"])

    async def untrust(self, address: str) -> bool:
        return bool((await self.request("trust_remove", address=address))["changed"])

    async def trusted(self) -> list[str]:
        return list((await self.request("trust_list"))["trusted"])

    async def request_trust(self, target: str, reason: str = "") -> dict[str, Any]:
        """Asks ``target``'s operator to trust this node."""
        result: dict[str, Any] = await self.request("trust_request", target=target, reason=reason)
        return result

    async def trust_requests(self) -> dict[str, Any]:
        """Pending (incoming, all pages) and outgoing trust requests."""
        pending, last = await self._pages("trust_requests", "pending")
        return {"pending": pending, "outgoing": last.get("outgoing", [])}

    async def answer_trust(self, address: str, approve: bool) -> dict[str, Any]:
        op = "trust_approve" if approve else "trust_reject"
        result: dict[str, Any] = await self.request(op, address=address)
        return result

    async def set_name(self, name: str | None) -> dict[str, Any]:
        """Claims ``name`` for this node (None drops it); :class:`~tern.NameTakenError` if
        another key holds it."""
        result: dict[str, Any] = await self.request("name_set", name=name)
        return result

    async def names(self) -> dict[str, Any]:
        """This node's own name, aliases and pinned names."""
        result: dict[str, Any] = await self.request("names")
        return result

    async def set_alias(self, name: str, address: str | None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("alias", name=name, address=address)
        return result

    async def forget_name(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("name_forget", name=name)
        return result

    async def dial(self, target: str, port: int) -> Stream:
        """Opens a stream to ``port`` on ``target`` (an address or a name): unpack it as
        ``reader, writer``; ``.peer`` is the verified address that answered."""
        reader, writer = await self._connect()
        try:
            info = await self._exchange(reader, writer, {"op": "dial", "target": target, "port": port})
        except BaseException:
            writer.close()
            raise
        return Stream(reader, writer, info)

    async def dial_pending(self, target: str, port: int) -> Pending:
        """Opens a stream to ``port`` on ``target`` for a socket to be attached to (see
        :class:`Pending`): the daemon then carries its bytes."""
        reader, writer = await self._connect()
        request = {"op": "dial", "target": target, "port": port, "attach": True}
        try:
            info = await self._exchange(reader, writer, request)
        except BaseException:
            writer.close()
            raise
        return Pending(reader, writer, info)

    def listen(self, port: int, open: bool = False) -> Listener:
        """Holds ``port`` for incoming streams and datagrams: use it as ``async with`` (the
        port is held until it exits) and iterate it for streams. ``open`` admits every
        verified peer; otherwise only trusted ones."""
        return Listener(self, port, open)

    async def send_datagram(
        self, target: str, port: int, data: bytes, source_port: int = 0
    ) -> None:
        """One datagram to ``port`` on ``target``: unreliable, unordered, at most ~1 KiB."""
        await self.request(
            "send_datagram", target=target, port=port, source_port=source_port, data=data.hex()
        )

    async def reset(self, stream: int, code: int = 0) -> None:
        """Ends a stream abnormally: the peer sees a reset with ``code``, not a clean end."""
        await self.request("reset", stream=stream, code=code)

    async def outcome(self, stream: int, wait_ms: int = 0) -> dict[str, Any]:
        """How a stream ended: ``{"end": "clean"}``, ``"broken"`` (with ``detail``) or
        ``"reset"`` (with ``code``); :class:`~tern.StillRunningError` if it has not."""
        result: dict[str, Any] = await self.request("outcome", stream=stream, wait_ms=wait_ms)
        return result


class Listener:
    """A held port: ``async with client.listen(port) as listener:`` then ``async for
    stream in listener`` (or ``await listener.accept()``), and ``await listener.datagram()``
    for datagrams."""

    def __init__(self, client: Client, port: int, open: bool) -> None:
        self.client = client
        self.port = port
        self.open = open
        self._held: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._starting = asyncio.Lock()
        self._closed = False

    async def start(self) -> Listener:
        if self._closed:
            raise TernError(f"the listener on port {self.port} is closed: listen again")
        async with self._starting:
            if self._held is None:
                await self._listen()
        return self

    async def _listen(self) -> None:
        if self._held is None:
            reader, writer = await self.client._connect()
            try:
                await Client._exchange(
                    reader, writer, {"op": "listen", "port": self.port, "open": self.open}
                )
            except BaseException:
                writer.close()
                raise
            self._held = (reader, writer)

    async def close(self) -> None:
        """Lets the port go."""
        self._closed = True
        if self._held is not None:
            self._held[1].close()
            self._held = None

    async def __aenter__(self) -> Listener:
        return await self.start()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    async def accept(self) -> Stream:
        """The next incoming stream."""
        await self.start()
        reader, writer = await self.client._connect()
        try:
            info = await Client._exchange(reader, writer, {"op": "accept", "port": self.port})
        except BaseException:
            writer.close()
            raise
        return Stream(reader, writer, info)

    async def accept_pending(self) -> Pending:
        """The next incoming stream, for a socket to be attached to (see :class:`Pending`)."""
        await self.start()
        reader, writer = await self.client._connect()
        request = {"op": "accept", "port": self.port, "attach": True}
        try:
            info = await Client._exchange(reader, writer, request)
        except BaseException:
            writer.close()
            raise
        return Pending(reader, writer, info)

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Stream:
        return await self.accept()

    async def datagram(self) -> Datagram:
        """The next datagram to this port."""
        await self.start()
        assert self._held is not None
        frame = await _read_frame(self._held[0])
        try:
            return Datagram(
                peer=str(frame["from"]),
                source_port=int(frame["source_port"]),
                data=bytes.fromhex(frame["data"]),
            )
        except (KeyError, ValueError) as e:
            raise ProtocolError(f"the daemon sent a datagram frame without its fields: {frame}") from e


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        header = await reader.readexactly(4)
        body = await reader.readexactly(_frames.body_len(header))
    except asyncio.IncompleteReadError as e:
        raise ProtocolError("the daemon closed the connection without answering") from e
    return _frames.decode(body)
