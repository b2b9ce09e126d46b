"""Real ternd daemons for the tests, on loopback, each in a home of its own; every process a
test starts is killed when it ends, pass or fail."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tern

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("TERN_BIN_DIR", REPO / "target" / "debug"))


def binary(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace` first (or set TERN_BIN_DIR)")
    return str(path)


class Daemon:
    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.args = args
        self.listen = "127.0.0.1:0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.home.mkdir(mode=0o700, exist_ok=True)
        log = open(self.home / "ternd.log", "ab")
        self.process = subprocess.Popen(
            [binary("ternd"), "--home", str(self.home), "--listen", self.listen, *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "RUST_LOG": "info"},
        )
        log.close()
        client = tern.SyncClient(self.home)
        deadline = time.monotonic() + 20
        while True:
            try:
                status = client.status()
                break
            except tern.DaemonNotRunningError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"ternd did not start: {self.log()}")
                time.sleep(0.05)
        self.address: str = status["address"]
        # Restarts come back on the same port.
        self.listen = status["listen"]

    def wait_registered(self) -> None:
        client = tern.SyncClient(self.home)
        deadline = time.monotonic() + 20
        while client.status()["registered"] is not True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"never registered: {self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def log(self) -> str:
        return (self.home / "ternd.log").read_text(errors="replace")[-4000:]


class Processes:
    """What a test started: daemons and helper processes, all killed at its end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: list[Daemon] = []
        self.others: list[subprocess.Popen[Any]] = []

    def daemon(self, name: str, *args: str) -> Daemon:
        daemon = Daemon(self.root / name, *args)
        self.daemons.append(daemon)
        return daemon

    def pair(self) -> tuple[Daemon, Daemon]:
        """A (its own rendezvous) and B (registered with A)."""
        a = self.daemon("a")
        b = self.daemon("b", "--rendezvous", a.listen)
        a.wait_registered()
        b.wait_registered()
        return a, b

    def spawn(self, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(list(args), start_new_session=True, **kw)
        self.others.append(process)
        return process

    def stop(self) -> None:
        for process in self.others:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for daemon in self.daemons:
            daemon.kill()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop()
