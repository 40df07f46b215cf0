"""uvicorn inside a role's event loop, stopped by the role's stop event (the API, and the
metrics port of the processor and projector)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller's stop event decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_server(
    app: ASGIApp,
    host: str,
    port: int,
    stop: asyncio.Event,
    sockets: list[socket.socket] | None = None,
    **config: Any,
) -> None:
    """Serve `app` until `stop` is set (or the server fails to start, which raises)."""
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", **config))
    serving = asyncio.create_task(server.serve(sockets=sockets))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    server.should_exit = True
    await serving
