"""A2A client (a2a-sdk) for the end-to-end tests.

Usage: a2a_counter_client.py URL N
Fetches the agent card at URL, sends "count N" once blocking and once streaming, and prints
one JSON line: the blocking task's final state and artifact text, and for the stream every
event's text with the time (seconds since the request) it arrived.
"""
import asyncio
import json
import sys
import time

from a2a.client import ClientConfig, create_client
from a2a.helpers.proto_helpers import get_stream_response_text, new_text_message
from a2a.types import Role, SendMessageRequest


async def run(url: str, n: int, streaming: bool, httpx_client=None) -> list:
    config = ClientConfig(streaming=streaming, httpx_client=httpx_client)
    client = await create_client(url, client_config=config)
    request = SendMessageRequest(message=new_text_message(f"count {n}", role=Role.ROLE_USER))
    events = []
    start = time.monotonic()
    async for response in client.send_message(request):
        events.append({
            "at": round(time.monotonic() - start, 3),
            "kind": response.WhichOneof("payload"),
            "text": get_stream_response_text(response),
            "state": response.task.status.state if response.HasField("task") else None,
        })
    await client.close()
    return events


async def main() -> None:
    url, n = sys.argv[1], int(sys.argv[2])
    blocking = await run(url, n, streaming=False)
    streamed = await run(url, n, streaming=True)
    print(json.dumps({"blocking": blocking, "streamed": streamed}))


if __name__ == "__main__":
    asyncio.run(main())
