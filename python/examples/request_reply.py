"""Send one JSON-RPC request to a service on another tern node and print the reply.

    TERN_HOME=~/.local/share/tern python request_reply.py TARGET PORT

TARGET is the other node's address or name; it must be listening on PORT (and trust this
node, unless it listens with --open).
"""

from __future__ import annotations

import asyncio
import json
import sys

import tern


async def main(target: str, port: int) -> None:
    client = tern.Client()
    reader, writer = await client.dial(target, port)
    request = {"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"from": "python"}}
    writer.write(json.dumps(request).encode() + b"\n")
    await writer.drain()
    print((await reader.readline()).decode().strip())
    writer.close()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    except tern.TernError as e:
        sys.exit(f"request_reply: {e}")
