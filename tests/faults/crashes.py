"""The crash-point fault tests' common run: a processor that exits at a named point of the
write path (WALLET_CRASH_AT, see processor.crash_points), and a fresh one taking over."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from foundation.settings import Settings
from processor.crash_points import EXIT_CODE
from schemas.commands import Command
from tests.integration.helpers import client_for, send_all
from tests.integration.processes import WalletProcess


async def crashed_then_resumed(
    settings: Settings,
    crash_at: str,
    sent: Sequence[Command],
    funds: Sequence[Command] = (),
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """`funds` answered first, then `sent` published at once: the processor exits at
    `crash_at` ("POINT:TYPE") on its first batch holding a record of the type, and a fresh
    processor (same `env`) answers the rest. The replies to `sent`, in order."""
    crashing = WalletProcess(settings, env=(env or {}) | {"WALLET_CRASH_AT": crash_at})
    procs = [crashing]
    try:
        async with client_for(settings) as client:
            await send_all(client, list(funds))
            futures = [await client.publish(c) for c in sent]
            await client.flush()
            await asyncio.to_thread(crashing.proc.wait, 60)
            procs.append(WalletProcess(settings, env=env))
            replies = await asyncio.wait_for(asyncio.gather(*futures), 120)
    finally:
        for proc in procs:
            proc.stop()
    assert crashing.proc.returncode == EXIT_CODE, crashing.log()[-2000:]
    return list(replies)
