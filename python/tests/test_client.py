"""The Python client against real daemons: streams, datagrams, trust, restarts, the sync
facade, and a daemon that is not there."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

import tern
from conftest import Processes

PORT = 5000
SIXTEEN_MIB = 16 << 20


def pattern(seed: int, size: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def test_a_stream_carries_16_mib_byte_exact_both_ways(lab: Processes) -> None:
    a, b = lab.pair()

    async def run() -> None:
        client_a, client_b = tern.Client(a.home), tern.Client(b.home)
        to_b, to_a = pattern(1, SIXTEEN_MIB), pattern(2, SIXTEEN_MIB)
        async with client_b.listen(PORT, open=True) as listener:

            async def serve() -> tuple[bytes, str]:
                stream = await listener.accept()
                reader, writer = stream
                writer.write(to_a)
                await writer.drain()
                writer.write_eof()
                got = await reader.read()
                writer.close()
                return got, stream.peer

            async def dial() -> tuple[bytes, str]:
                stream = await client_a.dial(b.address, PORT)
                reader, writer = stream
                send = asyncio.create_task(_send_and_finish(writer, to_b))
                got = await reader.read()
                await send
                writer.close()
                return got, stream.peer

            (at_b, seen_by_b), (at_a, seen_by_a) = await asyncio.gather(serve(), dial())
        assert hashlib.sha256(at_b).digest() == hashlib.sha256(to_b).digest()
        assert hashlib.sha256(at_a).digest() == hashlib.sha256(to_a).digest()
        assert seen_by_b == a.address and seen_by_a == b.address

    asyncio.run(run())


async def _send_and_finish(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    writer.write_eof()


def test_attached_sockets_carry_a_stream_with_no_bytes_through_python(lab: Processes) -> None:
    a, b = lab.pair()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        client_a, client_b = tern.Client(a.home), tern.Client(b.home)
        payload = pattern(3, 1 << 20)
        # Each side hands one end of a socket pair to its daemon and keeps the other.
        ours_a, theirs_a = socket.socketpair()
        ours_b, theirs_b = socket.socketpair()
        for s in (ours_a, ours_b):
            s.setblocking(False)
        async with client_b.listen(PORT, open=True) as listener:
            pending_a = await client_a.dial_pending(b.address, PORT)
            pending_b = await listener.accept_pending()
            assert pending_b.peer == a.address and pending_a.peer == b.address
            attached = asyncio.gather(pending_a.attach(theirs_a), pending_b.attach(theirs_b))
            await loop.sock_sendall(ours_a, payload)
            ours_a.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := await loop.sock_recv(ours_b, 65536):
                got += chunk
                if len(got) == len(payload):
                    ours_b.shutdown(socket.SHUT_WR)
            assert bytes(got) == payload
            assert await loop.sock_recv(ours_a, 1) == b""
            outcomes = await asyncio.wait_for(attached, 10)
        assert [o["end"] for o in outcomes] == ["clean", "clean"], outcomes
        # A descriptor that is not a stream socket breaks only that stream, with a reason.
        async with client_b.listen(PORT, open=True) as listener:
            pending = await client_a.dial_pending(b.address, PORT)
            await listener.accept()
            outcome = await pending.attach(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            assert outcome["end"] == "broken" and "not a stream socket" in outcome["detail"]
        for s in (ours_a, ours_b):
            s.close()

    asyncio.run(run())


def test_datagrams_go_both_ways(lab: Processes) -> None:
    a, b = lab.pair()

    async def run() -> None:
        client_a, client_b = tern.Client(a.home), tern.Client(b.home)
        async with client_a.listen(PORT, open=True) as at_a, client_b.listen(PORT, open=True) as at_b:
            await client_a.ping(b.address)
            await client_a.send_datagram(b.address, PORT, b"to b", source_port=PORT)
            got = await asyncio.wait_for(at_b.datagram(), 10)
            assert (got.peer, got.data) == (a.address, b"to b")
            await client_b.send_datagram(got.peer, got.source_port, b"back to a")
            back = await asyncio.wait_for(at_a.datagram(), 10)
            assert (back.peer, back.data) == (b.address, b"back to a")

    asyncio.run(run())


def test_an_untrusted_peer_is_refused_with_the_refusal_s_exception(lab: Processes) -> None:
    a, b = lab.pair()

    async def run() -> None:
        client_a, client_b = tern.Client(a.home), tern.Client(b.home)
        async with client_b.listen(PORT):  # private: trusted peers only
            with pytest.raises(tern.ApiError) as refused:
                await client_a.dial(b.address, PORT)
            assert refused.value.code == "refused", refused.value
            assert isinstance(refused.value, tern.RefusedError)
            assert b.address in str(refused.value)
            assert await client_b.trust(a.address) is True
            stream = await client_a.dial(b.address, PORT)
            assert stream.peer == b.address
            stream.writer.close()

    asyncio.run(run())


def test_a_daemon_restart_mid_stream_is_a_clear_error_and_a_redial_works(lab: Processes) -> None:
    a, b = lab.pair()

    async def run() -> None:
        client_a = tern.Client(a.home)
        async with tern.Client(b.home).listen(PORT, open=True) as listener:
            reader, writer = await client_a.dial(b.address, PORT)
            await listener.accept()
            writer.write(b"before")
            await writer.drain()
        b.kill()
        with pytest.raises(tern.DaemonNotRunningError) as down:
            await tern.Client(b.home).status()
        assert str(b.home / "ternd.sock") in str(down.value)
        await asyncio.to_thread(b.start)
        # The restarted node answers the old connection's packets with a stateless reset:
        # the stream ends at once, short of what it was owed.
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            for _ in range(20):
                writer.write(b"x" * 65536)
                await writer.drain()
                await asyncio.sleep(0.05)
            await asyncio.wait_for(reader.readexactly(1), 20)
        await asyncio.to_thread(b.wait_registered)
        async with tern.Client(b.home).listen(PORT, open=True) as listener:
            reader, writer = await client_a.dial(b.address, PORT)
            accepted = await listener.accept()
            writer.write(b"after")
            writer.write_eof()
            assert await accepted.reader.read() == b"after"
            writer.close()
            accepted.writer.close()

    asyncio.run(run())


def test_the_sync_facade(lab: Processes) -> None:
    a, b = lab.pair()
    client_a, client_b = tern.SyncClient(a.home), tern.SyncClient(b.home)
    assert client_a.status()["address"] == a.address
    assert client_a.ping(b.address)["address"] == b.address
    assert any(p["address"] == b.address for p in client_a.peers())
    with client_b.listen(PORT, open=True) as listener:
        with client_a.dial(b.address, PORT) as stream:
            stream.socket.sendall(b"hello")
            stream.socket.shutdown(socket.SHUT_WR)
            with listener.accept() as accepted:
                assert accepted.peer == a.address
                got = b""
                while chunk := accepted.socket.recv(65536):
                    got += chunk
                assert got == b"hello"


def test_no_daemon_names_the_socket_it_tried(tmp_path: os.PathLike[str]) -> None:
    client = tern.Client(tmp_path)
    with pytest.raises(tern.DaemonNotRunningError) as missing:
        asyncio.run(client.status())
    assert "ternd --home" in str(missing.value)
    assert isinstance(missing.value, tern.TernError)
    os.environ["TERN_HOME"] = str(tmp_path)
    try:
        assert tern.Client().socket == client.socket
    finally:
        del os.environ["TERN_HOME"]


def test_service_names_map_to_the_ports_ternd_uses() -> None:
    # Computed by the Rust implementation (tern_proto::service::service_port).
    assert tern.service_port("time") == 38168
    assert tern.service_port("8080") == 8080
    # As tern-proto: what parses as a u16 is that port, a larger number is a name.
    assert tern.service_port("0") == 0
    assert 32768 <= tern.service_port("70000") < 49152
    with pytest.raises(ValueError):
        tern.service_port("-bad-")
