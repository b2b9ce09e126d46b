"""The blocking facade, for code without an event loop: :class:`SyncClient` answers every
request :class:`~tern.Client` does, and its streams are plain connected sockets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from . import _frames
from .client import Client
from .errors import DaemonNotRunningError, ProtocolError, TernError


class SyncStream:
    """A stream as a blocking socket: ``sock.sendall``, ``sock.recv``,
    ``sock.shutdown(socket.SHUT_WR)`` to half-close; ``peer`` is the verified address."""

    def __init__(self, sock: socket.socket, info: dict[str, Any]) -> None:
        self.socket = sock
        self.peer = str(info.get("peer", ""))
        self.stream = int(info.get("stream", 0))

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class SyncClient:
    """``SyncClient(home=None)``: the same requests as :class:`~tern.Client`, blocking.
    Requests that answer once (status, peers, find, ping, trust, names, datagrams) run the
    async client on a private event loop; ``dial`` and ``accept`` give sockets."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self._client = Client(home)
        self.home: Path = self._client.home
        self.socket: Path = self._client.socket

    def _run(self, call: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **kw: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(call(*args, **kw))
        # Called from async code: its loop must not wait on itself, so run on another thread.
        with concurrent.futures.ThreadPoolExecutor(1) as worker:
            return worker.submit(asyncio.run, call(*args, **kw)).result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Every one-answer request of the async client (its public coroutines but `dial`,
        # which gives a socket here), by the same name.
        call = getattr(self._client, name, None)
        if name.startswith("_") or name == "dial" or not inspect.iscoroutinefunction(call):
            raise AttributeError(name)
        return lambda *args, **kw: self._run(call, *args, **kw)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.socket))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise DaemonNotRunningError(str(self.socket), str(self.home)) from e
        except OSError as e:
            sock.close()
            raise TernError(f"cannot connect to ternd at {self.socket}: {e}") from e
        return sock

    def _open(self, request: dict[str, Any]) -> SyncStream:
        sock = self._connect()
        try:
            sock.sendall(_frames.encode(request))
            info = _frames.answer(_read_frame(sock))
        except OSError as e:
            sock.close()
            raise ProtocolError(f"the connection to ternd broke: {e}") from e
        except BaseException:
            sock.close()
            raise
        return SyncStream(sock, info)

    def dial(self, target: str, port: int) -> SyncStream:
        """A stream to ``port`` on ``target``, as a blocking socket."""
        return self._open({"op": "dial", "target": target, "port": port})

    def listen(self, port: int, open: bool = False) -> SyncListener:
        """Holds ``port`` until the listener is closed; ``accept()`` gives streams."""
        held = self._connect()
        try:
            held.sendall(_frames.encode({"op": "listen", "port": port, "open": open}))
            _frames.answer(_read_frame(held))
        except BaseException:
            held.close()
            raise
        return SyncListener(self, port, held)


class SyncListener:
    def __init__(self, client: SyncClient, port: int, held: socket.socket) -> None:
        self._client = client
        self.port = port
        self._held = held

    def accept(self) -> SyncStream:
        return self._client._open({"op": "accept", "port": self.port})

    def close(self) -> None:
        self._held.close()

    def __enter__(self) -> SyncListener:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProtocolError("the daemon closed the connection without answering")
        data += chunk
    return bytes(data)


def _read_frame(sock: socket.socket) -> dict[str, Any]:
    header = _read_exactly(sock, 4)
    return _frames.decode(_read_exactly(sock, _frames.body_len(header)))


__all__ = ["SyncClient", "SyncListener", "SyncStream"]
