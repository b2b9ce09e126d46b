"""An a2a-sdk client through tern.http's httpx transport, to an a2a-sdk agent served on a tern
port by tern.asgi: no TCP listener, no forward; blocking and streaming (SSE) requests."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

import tern
from conftest import REPO, Processes

httpx = pytest.importorskip("httpx")
pytest.importorskip("a2a")
sys.path.insert(0, str(REPO / "tests/clients"))
import tern.asgi  # noqa: E402
import tern.http  # noqa: E402
from a2a_counter_agent import build_app  # noqa: E402
from a2a_counter_client import run as ask_counter  # noqa: E402

PORT = 2000


def test_an_a2a_agent_on_a_tern_port_answers_blocking_and_streamed(lab: Processes) -> None:
    a, b = lab.pair()
    url = f"http://{tern.http.url_host(a.address)}:{PORT}/"

    async def run() -> tuple[list[Any], list[Any], Any]:
        app = build_app(url)
        serving = asyncio.create_task(tern.asgi.serve(app, PORT, open=True, client=tern.Client(a.home)))
        await asyncio.sleep(0.5)
        transport = tern.http.Transport(tern.Client(b.home))
        try:
            async with httpx.AsyncClient(transport=transport, timeout=30) as http:
                card = (await http.get(url + ".well-known/agent-card.json")).json()
                blocking = await ask_counter(url, 4, streaming=False, httpx_client=http)
                streamed = await ask_counter(url, 4, streaming=True, httpx_client=http)
        finally:
            serving.cancel()
        return blocking, streamed, card

    blocking, streamed, card = asyncio.run(asyncio.wait_for(run(), 120))
    assert card["name"] == "counter"
    assert blocking[-1]["kind"] == "task" and blocking[-1]["text"] == "counted to 4"
    ticks = [e for e in streamed if (e["text"] or "").startswith("tick")]
    assert [e["text"] for e in ticks] == ["tick 0", "tick 1", "tick 2", "tick 3"]
    assert any(e["text"] == "counted to 4" for e in streamed)
    # Unbuffered: the agent spaces ticks 0.3 s apart, and so must their arrivals.
    assert ticks[3]["at"] - ticks[0]["at"] > 0.6, streamed


def test_an_asgi_app_sees_the_verified_peer_as_its_client(lab: Processes) -> None:
    a, b = lab.pair()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = scope["client"][0].encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def run() -> str:
        serving = asyncio.create_task(tern.asgi.serve(app, PORT, client=tern.Client(a.home)))
        await asyncio.sleep(0.3)
        tern.SyncClient(a.home).trust(b.address)  # a private port: trusted peers only
        try:
            transport = tern.http.Transport(tern.Client(b.home))
            async with httpx.AsyncClient(transport=transport) as http:
                response = await http.get(f"http://{tern.http.url_host(a.address)}:{PORT}/who")
                return str(response.text)
        finally:
            serving.cancel()

    assert asyncio.run(asyncio.wait_for(run(), 60)) == b.address
