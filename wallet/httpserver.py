"""uvicorn inside a role's event loop, stopped by the role's stop event (the API, and the
metrics port of the processor and projector).

The listening socket is bound here, before uvicorn starts: a port already taken is then a
ConfigError naming the setting, raised before the role does any work, instead of uvicorn's
`sys.exit` from inside a task, which skips every clean-up on its way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from foundation.errors import ConfigError


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller's stop event decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listening_socket(host: str, port: int, setting: str, reuse_port: bool = False) -> socket.socket:
    """A bound, listening socket. With `reuse_port` other processes may bind the same port
    (SO_REUSEPORT: the kernel spreads connections over them). Off by default, so that a second
    server started by mistake fails loudly instead of silently sharing the port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}", setting=setting
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def run_server(app: ASGIApp, sock: socket.socket, stop: asyncio.Event, **config: Any) -> None:
    """Serve `app` on `sock` until `stop` is set; the socket is closed on the way out."""
    server = _Server(uvicorn.Config(app, log_level="warning", **config))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
    finally:
        stopping.cancel()
        sock.close()
