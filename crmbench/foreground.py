"""Serving in the foreground: bind the port first, then announce it, and stop cleanly.

SIGTERM (what Docker, systemd and Kubernetes send) is handled as SIGINT (Ctrl-C): uvicorn
lets in-flight requests finish, services started by the command stop, the embedded
Postgres is released, and a `crmbench serve` exits 0.
"""

from __future__ import annotations

import errno
import signal
import socket
import threading
from types import FrameType
from typing import Any

from crmbench.errors import fail
from crmbench_clients.calls import SERVER_KEEP_ALIVE_SECONDS


def _sigterm_as_sigint(signum: int, frame: FrameType | None) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored or default: stop as Ctrl-C would
        raise KeyboardInterrupt


def handle_sigterm_as_sigint() -> None:
    """From now on SIGTERM does whatever SIGINT does at that moment (main thread only).

    Whatever handles SIGINT then (Python's KeyboardInterrupt, asyncio.run's cancellation of
    the main task, uvicorn's graceful shutdown) handles SIGTERM the same way, so `finally`
    blocks and atexit handlers run on both. Does nothing outside the main thread.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_sigint)


def shown_host(host: str) -> str:
    """The host to print in URLs: `localhost` for a wildcard interface."""
    return "localhost" if host in ("0.0.0.0", "::") else host


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; a busy or forbidden port is a one-line error.

    Raises typer.Exit (after printing `error: ...`) when the port cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise fail(
                f"port {port} on {host} is already in use (another service is listening "
                "there); stop it or choose another port with --port"
            ) from None
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(app: Any, sock: socket.socket, *, log_level: str, workers: int = 1) -> None:
    """Serves `app` (an ASGI app, or an import string of an app factory) on a bound socket
    until SIGINT or SIGTERM; returns normally after a graceful shutdown."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    factory = isinstance(app, str)
    config = uvicorn.Config(
        app,
        factory=factory,
        workers=workers,
        log_level=log_level,
        timeout_keep_alive=int(SERVER_KEEP_ALIVE_SECONDS),
    )
    try:
        if workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shut down gracefully, then re-raised the signal: a normal stop.
        pass
    finally:
        sock.close()
