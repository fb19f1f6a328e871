"""A local checkpoint behind a real OpenAI-compatible server (`transformers serve`) on 127.0.0.1.

What the `model=openai` tests and the throughput script score against: the same server code
users can run, not a mock. Needs the `serving` extra of transformers (FastAPI, Uvicorn).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from mibench.errors import MibenchError


class ServerStartError(MibenchError, RuntimeError):
    """The server did not come up; the message holds the end of its log."""


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalServer:
    """One `transformers serve` process, pinned to one checkpoint."""

    checkpoint: str
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The name the server knows the model by: the checkpoint as given on its command line."""
        return self.checkpoint

    def start(self, device: str = "cpu", timeout_s: float = 180.0) -> LocalServer:
        """Start the server and wait until `/health` answers."""
        command = [sys.executable, "-m", "transformers.cli.transformers", "serve",
                   "--host", "127.0.0.1", "--port", str(self.port), "--device", device,
                   self.checkpoint]
        with open(self.log_path, "ab") as log:
            # its own session, so stop() can end the server and any worker it forks
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"transformers serve exited with code "
                                       f"{self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).is_success:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerStartError(f"transformers serve gave no /health within {timeout_s:.0f} s:"
                               f"\n{self.log_tail()}")

    def stop(self, kill: bool = False) -> None:
        """End the server: SIGTERM (SIGKILL if `kill`, or if it lingers), and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextmanager
def served(checkpoint: str, log_path: str | os.PathLike, *, port: int | None = None,
           device: str = "cpu") -> Iterator[LocalServer]:
    """`transformers serve CHECKPOINT` on 127.0.0.1 for the duration of the block."""
    server = LocalServer(str(checkpoint), port or free_port(), Path(log_path))
    try:
        yield server.start(device)
    finally:
        server.stop()
