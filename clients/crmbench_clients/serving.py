"""Serve an ASGI app with uvicorn on a free 127.0.0.1 port, in a thread of this process.

Used by commands that start a service for their own duration, by the simulated LLM and by
the tests; the thread stops when the block ends.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from crmbench_clients.calls import SERVER_KEEP_ALIVE_SECONDS

START_TIMEOUT_SECONDS = 30.0


class ServiceDidNotStart(RuntimeError):
    """The local service did not begin serving in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving_in_thread(app: Any, name: str) -> Iterator[str]:
    """Serves an ASGI app with uvicorn on a free 127.0.0.1 port; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_keep_alive=int(SERVER_KEEP_ALIVE_SECONDS),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServiceDidNotStart(f"the local {name} on port {port} did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
