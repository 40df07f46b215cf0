"""PostgreSQL faults under load: the server stopped for 10 s, and writes that fail (disk full, a
constraint) for a while. Processors pause and retry on their own; nothing is half-written."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import httpx
import pytest

from foundation.settings import Settings
from tests.faults.load import account, under_load, workload
from tests.integration.processes import WalletProcess
from wallet.devstack import EmbeddedPostgres, free_port

pytestmark = pytest.mark.slow
OUTAGE_S = 10.0
READY_ANSWER_S = 4.0  # /ready must answer within this even with PostgreSQL gone


class TestPostgresOutage:
    async def test_stopped_for_ten_seconds_under_load(
        self, own_postgres: tuple[EmbeddedPostgres, Settings]
    ) -> None:
        """Processors and API ride out a 10 s outage: /ready says 503 meanwhile, then all
        resumes by itself and every command is in the ledger once."""
        server, settings = own_postgres
        work = workload(8_000, 300, seed=6, reply_to=settings.replies_topic)
        port = free_port()
        api = WalletProcess(settings, "api", env={"WALLET_API_PORT": str(port)})
        procs = [WalletProcess(settings), WalletProcess(settings), api]
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=READY_ANSWER_S)
        async with http, under_load(settings, work, 400, procs) as load:
            # The API must be serving before the database goes: one that starts during the
            # outage cannot open its pool and exits (seen once on a fresh clone's cold start).
            await _serving(http)
            server.stop()
            during = await _ready_codes(http, OUTAGE_S)
            server.start()
            replies = await load.settle(timeout_s=240)
            after = (await http.get("/ready")).status_code
            dead = [p.log()[-3000:] for p in procs if not p.alive()]
            assert not dead, f"a process died instead of retrying: {dead}"
        assert during and set(during) == {503}, during
        assert after == 200
        assert any("batch failed" in p.log() or "could not claim" in p.log() for p in procs[:2])
        audit = await account(settings, work, load, replies)
        print(audit.line(f"PostgreSQL stopped {OUTAGE_S:.0f} s; /ready {during[0]} meanwhile"))


async def _serving(http: httpx.AsyncClient, timeout_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    until_s = loop.time() + timeout_s
    while loop.time() < until_s:
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/health")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise AssertionError("the API did not start")


async def _ready_codes(http: httpx.AsyncClient, for_s: float) -> list[int]:
    """/ready's status once a second for `for_s` (a hang fails the test by timing out)."""
    codes = []
    loop = asyncio.get_running_loop()
    until_s = loop.time() + for_s
    while loop.time() < until_s:
        codes.append((await http.get("/ready")).status_code)
        await asyncio.sleep(1.0)
    return codes


_FAULT_SQL = """
CREATE TABLE fault_switch (sqlstate text NOT NULL);
CREATE FUNCTION fault_inject() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    state text;
BEGIN
    SELECT sqlstate INTO state FROM fault_switch LIMIT 1;
    IF state IS NOT NULL THEN
        RAISE EXCEPTION 'injected fault' USING ERRCODE = state;
    END IF;
    RETURN NULL;
END;
$$;
-- After the ledger rows went in, in the same transaction: a failure here must undo them all.
CREATE TRIGGER fault_inject AFTER INSERT ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION fault_inject();
"""


class TestWriteErrors:
    async def test_disk_full_then_a_constraint_fails_every_batch(self, stack: Settings) -> None:
        """Batches fail whole for 4 s with disk_full, then 4 s with check_violation; the worker
        logs each and retries with backoff, never skipping or half-writing a command."""
        work = workload(6_000, 200, seed=7, reply_to=stack.replies_topic)
        await _execute(stack, _FAULT_SQL)
        procs = [WalletProcess(stack)]
        async with under_load(stack, work, 400, procs) as load:
            for sqlstate in ("53100", "23514"):  # disk_full, check_violation
                await _execute(stack, f"INSERT INTO fault_switch VALUES ('{sqlstate}')")
                await asyncio.sleep(4)
                await _execute(stack, "DELETE FROM fault_switch")
            replies = await load.settle(timeout_s=240)
        log = procs[0].log()
        for error in ("DiskFullError", "CheckViolationError"):
            assert "batch failed; will retry from the stored offset" in log and error in log
        audit = await account(stack, work, load, replies)
        print(audit.line("disk full for 4 s, then a failing constraint for 4 s"))


async def _execute(settings: Settings, sql: str) -> None:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        await conn.execute(sql)  # several statements: no prepared statement
    finally:
        await conn.close()
