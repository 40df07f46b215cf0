"""The HTTP API fuzzed from its own OpenAPI document with schemathesis, over real HTTP against
a real processor: no request makes a 5xx, and no invalid request writes anything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from foundation.settings import Settings
from tests.integration.helpers import fetch
from tests.integration.processes import WalletProcess
from tests.integration.test_api import new_key
from wallet.apikeys import SCOPES
from wallet.devstack import free_port

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 40


@pytest.fixture
async def served(stack: Settings) -> AsyncIterator[tuple[str, str]]:
    """A processor and an API process; yields the API's URL and a key with every scope."""
    port = free_port()
    procs = [WalletProcess(stack), WalletProcess(stack, "api", env={"WALLET_API_PORT": str(port)})]
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield url, await new_key(stack, "fuzz", list(SCOPES))
    finally:
        for proc in procs:
            proc.stop()


def _schemathesis(url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", f"{url}/openapi.json",
         "--header", f"Authorization: Bearer {key}", "--max-examples",
         str(EXAMPLES_PER_OPERATION), "--generation-deterministic", "--request-timeout", "15",
         "--no-color", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def _negative_bodies(cassette: Path) -> tuple[set[tuple[str, str]], int]:
    """(userId, idempotencyKey) of every request whose body the cassette marks negative and
    that names both as strings (a body that names neither cannot be stored anyway), less the
    pairs a body not marked negative used too: that one may be stored, rightly; and how many
    negative bodies named those pairs (deterministic generation reuses a few strings, so many
    bodies share a pair)."""
    found: dict[bool, set[tuple[str, str]]] = {True: set(), False: set()}
    sent: list[tuple[str, str]] = []
    for interaction in yaml.safe_load(cassette.read_text())["http_interactions"]:
        mode = (interaction.get("components") or {}).get("body", {}).get("mode")
        body = (interaction["request"].get("body") or {}).get("string") or ""
        with contextlib.suppress(ValueError):
            document = json.loads(body)
            if isinstance(document, dict):
                user, key = document.get("userId"), document.get("idempotencyKey")
                if isinstance(user, str) and isinstance(key, str):
                    found[mode == "negative"].add((user, key))
                    sent += [(user, key)] if mode == "negative" else []
    checked = found[True] - found[False]
    return checked, sum(1 for pair in sent if pair in checked)


def _cases(report: str) -> str:
    """schemathesis's own count of the test cases it ran ("712 generated, 712 passed")."""
    lines = report.splitlines()
    found = [lines[i + 1].strip() for i, line in enumerate(lines[:-1]) if "Test cases:" in line]
    return found[0] if found else "?"


class TestFuzz:
    async def test_invalid_requests_are_4xx_and_write_nothing(
        self, served: tuple[str, str], stack: Settings, tmp_path: Path
    ) -> None:
        """Requests that break the schema: every one refused with a 4xx, none stored as a
        command. (Negative mode also sends some valid bodies: its stateful phase follows the
        responses' links, from a hold to its capture, and its fuzzing phase sends a valid body
        where only another part of the request is meant to be wrong. The cassette says which
        bodies were negative; only those must write nothing.)"""
        url, key = served
        checks = "not_a_server_error,negative_data_rejection"
        cassette = tmp_path / "cassette.yaml"
        options = ("--mode", "negative", "--checks", checks, "--report-vcr-path", str(cassette))
        run = await asyncio.to_thread(_schemathesis, url, key, *options)
        assert run.returncode == 0, run.stdout[-6000:]
        negative, bodies = _negative_bodies(cassette)
        assert bodies > 50, f"the run sent too few invalid bodies to mean anything: {bodies}"
        rows = await fetch(stack, "SELECT user_id, idempotency_key FROM processed_commands")
        written = {(r["user_id"], r["idempotency_key"]) for r in rows} & negative
        assert not written, f"invalid requests were written: {sorted(written)[:5]}"
        print("fuzz | negative |", _cases(run.stdout), f"| {bodies} invalid bodies naming"
              f" {len(negative)} (user, key) pairs, 0 written")  # fmt: skip

    async def test_valid_requests_never_make_a_server_error(self, served: tuple[str, str]) -> None:
        """Requests the schema allows: answered without a 5xx, each status one the spec lists."""
        url, key = served
        run = await asyncio.to_thread(_schemathesis, url, key, "--mode", "positive",
                                      "--checks", "not_a_server_error")  # fmt: skip
        assert run.returncode == 0, run.stdout[-6000:]
        print("fuzz | positive |", _cases(run.stdout))
