"""A stalled partition shows: /ready answers 503 with the reason, `wallet status` and
`wallet verify` name it, and all of them clear once the partition moves again."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx
from rich.console import Console

from foundation.settings import Settings
from tests.integration.helpers import client_for, command, refuse_commands, running_processor
from wallet.api import serve
from wallet.devstack import free_port
from wallet.operations import run_verify
from wallet.status import gather, render


async def _ready_until(api: httpx.AsyncClient, status_code: int) -> dict[str, Any]:
    for _ in range(300):
        answer = await api.get("/ready")
        if answer.status_code == status_code:
            return answer.json()  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"/ready never answered {status_code}")


def _screen(report: Any) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render(report))
    return console.export_text()


class TestStalledPartition:
    async def test_ready_status_and_verify_show_it_until_it_moves(self, stack: Settings) -> None:
        """A command the database keeps failing (disk_full) stalls its partition: /ready says
        503 naming the partition and the error, status shows STALLED and WAITING, verify fails
        both live checks; once the database takes it, everything is clear again."""
        settings = stack.model_copy(update={
            "api_port": free_port(), "stall_failures": 3, "retry_backoff_max_ms": 200,
            "command_wait_max_ms": 1000,
        })  # fmt: skip
        await refuse_commands(settings, "53100")
        stop = asyncio.Event()
        async with running_processor(settings), client_for(settings) as client:
            server = asyncio.create_task(serve(settings, stop))
            base = f"http://127.0.0.1:{settings.api_port}"
            try:
                async with httpx.AsyncClient(base_url=base, timeout=30) as api:
                    reply = await client.publish(command("top_up", "dora", 5, key="poison-1"))
                    await client.flush()
                    stalled = await _ready_until(api, 503)
                    await asyncio.sleep(1.5)  # past command_wait_max_ms
                    report = await gather(settings)
                    checks = {r.name: r for r in await run_verify(settings)}
                    await refuse_commands(settings, None)
                    await asyncio.wait_for(reply, 30)
                    recovered = await _ready_until(api, 200)
                    checks_after = {r.name: r.ok for r in await run_verify(settings)}
            finally:
                stop.set()
                await asyncio.wait_for(server, 30)
        [reason] = stalled["stalled"]
        assert reason.startswith("processor partition ") and "DiskFullError" in reason
        assert stalled["postgres"] == "ok" and recovered["stalled"] == []
        screen = _screen(report)
        assert "STALLED: processor partition" in screen and "WAITING: partition" in screen
        assert not checks["no partition is stalled"].ok
        waited = next(r for name, r in checks.items() if name.startswith("no command has waited"))
        assert not waited.ok and "has waited" in waited.examples[0]
        assert all(checks_after.values()), checks_after
