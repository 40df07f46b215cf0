"""What the running processes write to their logs: no secret, no command payload."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

import httpx
import pytest

from foundation.settings import Settings
from schemas.commands import AMOUNT_MAX
from tests.integration.helpers import client_for, command
from tests.integration.processes import WalletProcess
from wallet.devstack import free_port

MARKER = "payload-marker-7f3a"
PASSWORD = "hunter2-db-password"


def _with_password(settings: Settings) -> tuple[Settings, str]:
    """The settings with a password in the database URL (the embedded server trusts any)."""
    assert settings.database_url is not None
    if os.environ.get("WALLET_DATABASE_URL"):
        pytest.skip("puts a password into the URL of the embedded server, which ignores it")
    url = settings.database_url.replace(
        "postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@"
    )
    assert PASSWORD in url
    return settings.model_copy(update={"database_url": url}), url


class TestProcessLogs:
    async def test_processor_and_api_logs_hold_no_secret_or_payload(self, stack: Settings) -> None:
        """Commands carrying a marker (accepted, rejected, malformed) and requests with keys
        leave neither the marker, nor the database password, nor a key in any log line."""
        settings, url = _with_password(stack)
        port = free_port()
        processor = WalletProcess(settings)
        api = WalletProcess(settings, "api", env={"WALLET_API_PORT": str(port)})
        key = "dw_0123456789abcdef_" + "K" * 43
        try:
            async with client_for(settings) as client:
                marked = [
                    command("top_up", "ana", 5, description=MARKER, metadata={"note": MARKER}),
                    command("spend", "ana", AMOUNT_MAX, description=MARKER),  # rejected
                ]
                for c in marked:
                    assert (await client.request(c, timeout_s=60)).command_id == c.command_id
                await client.publish_raw(b"ana", b'{"not": "' + MARKER.encode() + b'"}')
                await client.flush()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                for _ in range(200):
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/health")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
                refused = await http.get("/wallet/ana/balance",
                                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert refused.status_code == 401
        finally:
            processor.stop()
            api.stop()
        logs = processor.log() + api.log()
        assert '"processor started"' in logs, logs[:2000]  # the logs are not simply empty
        for secret in (MARKER, PASSWORD, key, key[20:]):
            assert secret not in logs, secret
        assert url not in logs


class TestBoundContext:
    async def test_each_record_s_lines_carry_command_id_user_id_and_partition(
        self, stack: Settings
    ) -> None:
        """At debug level every command's line, and a dead letter's (warning), carries its
        command id, user id and partition, read back from the process's JSON log."""
        processor = WalletProcess(stack, env={"WALLET_LOG_LEVEL": "debug"})
        sent = [command("top_up", "lia", 5), command("spend", "lia", 500)]  # accepted, rejected
        broken = command("top_up", "lia", 1).model_dump(mode="json") | {"amount": "five"}
        try:
            async with client_for(stack) as client:
                for c in sent:
                    await client.request(c, timeout_s=60)
                await client.publish_raw(b"lia", json.dumps(broken).encode())
                await client.flush()
                for _ in range(600):
                    if '"record dead-lettered"' in processor.log():
                        break
                    await asyncio.sleep(0.1)
        finally:
            processor.stop()
        lines = [json.loads(line) for line in processor.log().splitlines() if line.startswith("{")]
        about = [line for line in lines if "command_id" in line]
        expected = {str(c.command_id) for c in sent} | {broken["command_id"]}
        assert {line["command_id"] for line in about} == expected
        for line in about:
            assert line["user_id"] == "lia" and isinstance(line["partition"], int), line
        dead = [line for line in about if line["event"] == "record dead-lettered"]
        assert [(d["level"], d["code"]) for d in dead] == [("warning", "invalid_fields")]
