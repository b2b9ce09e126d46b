"""The Python client against the Rust client library (tern-ctl, through `ternctl bench`), in
the same run, on two daemons on loopback: throughput through the peer's echo service, and
200-byte request/reply round trips on one open stream.

    cargo build --release --workspace && .venv/bin/python python/benchmarks/bench.py

Uses target/release binaries when they exist (else target/debug; or TERN_BIN_DIR). Prints
each Python figure as a ratio of the Rust one measured just before it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tern

REPO = Path(__file__).resolve().parents[2]
ECHO_PORT = 7
TOTAL = 64 << 20
CHUNK = 64 << 10
REQUEST = 200
ROUND_TRIPS = 1000


def bin_dir() -> Path:
    if "TERN_BIN_DIR" in os.environ:
        return Path(os.environ["TERN_BIN_DIR"])
    release = REPO / "target" / "release"
    return release if (release / "ternd").exists() else REPO / "target" / "debug"


def start(home: Path, *args: str) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    home.mkdir(mode=0o700)
    process = subprocess.Popen(
        [str(bin_dir() / "ternd"), "--home", str(home), "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = tern.SyncClient(home)
    for _ in range(400):
        try:
            status = client.status()
            if not args or status["registered"] is True:
                return process, status
        except tern.DaemonNotRunningError:
            pass
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"ternd in {home} did not start or register")


async def python_figures(home: Path, target: str) -> tuple[float, float, float]:
    client = tern.Client(home)
    reader, writer = await client.dial(target, ECHO_PORT)

    async def send() -> None:
        chunk = b"\x5a" * CHUNK
        for _ in range(TOTAL // CHUNK):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    started = time.perf_counter()
    sender = asyncio.create_task(send())
    received = 0
    while data := await reader.read(1 << 20):
        received += len(data)
    await sender
    mib_s = TOTAL / (1 << 20) / (time.perf_counter() - started)
    writer.close()
    assert received == TOTAL, f"{received} of {TOTAL} bytes came back"

    reader, writer = await client.dial(target, ECHO_PORT)
    request = b"r" * REQUEST
    times = []
    for _ in range(ROUND_TRIPS):
        began = time.perf_counter()
        writer.write(request)
        await writer.drain()
        await reader.readexactly(REQUEST)
        times.append(time.perf_counter() - began)
    writer.close()
    times.sort()
    return mib_s, times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        a_home, b_home = Path(root) / "a", Path(root) / "b"
        a, a_status = start(a_home)
        b, b_status = start(b_home, "--rendezvous", str(a_status["listen"]))
        try:
            rust = subprocess.run(
                [str(bin_dir() / "ternctl"), "--home", str(a_home), "--json", "bench",
                 str(b_status["address"]), "--bytes", str(TOTAL)],
                capture_output=True, text=True, check=True,
            )
            figures = json.loads(rust.stdout)["data"]
            rust_mib_s = figures["throughput_mib_s"]
            rust_p50 = figures["request_reply_us"]["p50"]
            mib_s, p50, p99 = asyncio.run(python_figures(a_home, str(b_status["address"])))
        finally:
            for process in (a, b):
                process.send_signal(signal.SIGKILL)
                process.wait()
    print(f"binaries: {bin_dir()}")
    print(f"echo throughput, 64 MiB each way: Rust client {rust_mib_s:.1f} MiB/s, "
          f"Python client {mib_s:.1f} MiB/s, ratio {mib_s / rust_mib_s:.2}")
    print(f"{REQUEST} B request/reply on one stream ({ROUND_TRIPS}): Rust p50 {rust_p50:.0f} µs, "
          f"Python p50 {p50:.0f} µs (p99 {p99:.0f} µs), ratio {p50 / rust_p50:.2}")


if __name__ == "__main__":
    sys.exit(main())
