"""Fixtures of the verifier tests: a verifier served by uvicorn in a thread, over real HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI


@dataclass
class ServedApp:
    """Any ASGI app on a real port in a thread of the test process."""

    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(app: FastAPI) -> ServedApp:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("verifier test server did not start")
        time.sleep(0.02)
    return ServedApp(f"http://127.0.0.1:{port}", server, thread)


@dataclass
class Served:
    """Starts apps and stops them all at the end of the test."""

    apps: list[ServedApp]

    def __call__(self, app: FastAPI) -> str:
        served = serve(app)
        self.apps.append(served)
        return served.base_url


@pytest.fixture
def served() -> Iterator[Served]:
    """`served(app)` serves an app for this test and returns its base URL."""
    holder = Served([])
    yield holder
    for app in holder.apps:
        app.stop()
