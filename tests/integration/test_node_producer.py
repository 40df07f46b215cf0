"""The contract from outside Python: a Node.js game server (kafkajs) sends commands and reads
their replies against a real processor, with none of the wallet's code on its side."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from foundation.settings import Settings
from tests.integration.helpers import balance, running_processor
from tests.integration.tools import require

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-producer"
NPM_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def node_example() -> Path:
    """The example with its locked dependencies installed (`npm ci`), as its README says."""
    require(lambda: bool(shutil.which("node") and shutil.which("npm")), ["nodejs", "npm"],
            "Node.js with npm")  # fmt: skip
    if not (EXAMPLE / "node_modules" / "kafkajs").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            check=True,
            capture_output=True,
            timeout=NPM_TIMEOUT_S,
        )
    return EXAMPLE


async def _produce(settings: Settings, *args: str) -> dict[str, Any]:
    """`node produce.js ARGS` as a game server runs it; its one line of output, parsed."""
    env = os.environ | {
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "COMMANDS_TOPIC": settings.commands_topic,
        "REPLIES_TOPIC": settings.replies_topic,
    }
    proc = await asyncio.create_subprocess_exec(
        "node", "produce.js", *args, cwd=EXAMPLE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert len(lines) == 1, lines
    return dict(json.loads(lines[0]))


class TestNodeProducer:
    async def test_commands_and_replies_round_trip(self, stack: Settings, node_example: Path):
        """A top-up is accepted, an overdraft refused with the balance, and a retry with the
        same key answered as a duplicate: the processor found each user's partition from
        kafkajs's murmur2 partitioner, or it would have replied wrong_partition."""
        key = f"node-{uuid.uuid4().hex}"
        async with running_processor(stack):
            top_up = await _produce(stack, "top_up", "node-player", "GOLD", "100", key)
            overdraft = await _produce(stack, "spend", "node-player", "GOLD", "250")
            retry = await _produce(stack, "top_up", "node-player", "GOLD", "100", key)
        assert (top_up["status"], top_up["balance"]) == ("accepted", 100)
        assert top_up["duplicate"] is False
        assert overdraft["status"] == "rejected"
        assert (overdraft["error"]["code"], overdraft["balance"]) == ("insufficient_funds", 100)
        assert (retry["duplicate"], retry["transaction_id"]) == (True, top_up["transaction_id"])
        assert await balance(stack, "node-player") == 100
