"""Prometheus metrics scraped from real `wallet processor`, `wallet projector` and `wallet api`
processes, after a known mix of commands; and the health probe the image's HEALTHCHECK runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from foundation.settings import Settings
from tests.integration.helpers import client_for, command, send_all
from tests.integration.processes import WalletProcess, run_wallet
from wallet.devstack import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _scrape(port: int, until: str | None = None, timeout_s: float = 60.0) -> Samples:
    """Scrape /metrics, again until `until` (a sample name) appears."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for _ in range(int(timeout_s / 0.1)):
            with contextlib.suppress(httpx.TransportError):
                response = await http.get("/metrics")
                samples = _parse(response.text)
                if until is None or any(name == until for name, _ in samples):
                    return samples
            await asyncio.sleep(0.1)
    raise AssertionError(f"no {until} on port {port}")


async def _healthy(port: int, timeout_s: float = 60.0) -> None:
    """Wait until the role's /health answers 200 (a processor: once it joined its group)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for _ in range(int(timeout_s / 0.1)):
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"port {port} never became healthy")


@contextlib.contextmanager
def _role(settings: Settings, role: str, port: int, env: dict[str, str]) -> Iterator[WalletProcess]:
    process = WalletProcess(settings, role, env=env | {"WALLET_METRICS_PORT": str(port)})
    try:
        yield process
    finally:
        process.stop()


class TestProcessorMetrics:
    async def test_a_known_mix_of_commands_is_counted(self, stack: Settings) -> None:
        """Accepted, rejected, duplicate and dead-lettered records are counted by type and
        outcome; batch sizes, commit times, latencies and each write-path stage cover every
        command; the lag of every owned partition is 0 afterwards and nothing is left to
        publish."""
        port = free_port()
        with _role(stack, "processor", port, {}):
            await _healthy(port)
            async with client_for(stack) as client:
                top_ups = [command("top_up", f"m{i}", 100, key=f"k{i}") for i in range(5)]
                await send_all(client, top_ups)
                await send_all(client, [command("spend", "m0", 1_000)])  # overdraft
                await send_all(client, [command("top_up", "m1", 100, key="k1")])  # duplicate
                await client.publish_raw(b"m2", b"not json")
                await client.flush()
            samples = await _scrape(port, until="wallet_dead_letters_total")
        count = "wallet_commands_total"
        assert _value(samples, count, type="top_up", outcome="accepted", code="") == 5
        assert _value(samples, count, type="top_up", outcome="duplicate", code="") == 1
        rejected = {"type": "spend", "outcome": "rejected", "code": "insufficient_funds"}
        assert _value(samples, count, **rejected) == 1
        dead = {"type": "unknown", "outcome": "dead_lettered", "code": "not_json"}
        assert _value(samples, count, **dead) == 1
        assert _value(samples, "wallet_dead_letters_total", code="not_json") == 1
        assert _value(samples, "wallet_batch_size_records_sum") == 8
        assert _value(samples, "wallet_command_latency_seconds_count") == 7  # commands only
        assert _value(samples, "wallet_batch_commit_seconds_count") >= 1
        for stage in ("admit", "lookup", "plan", "write", "publish"):
            assert _value(samples, "wallet_step_stage_seconds_count", stage=stage) >= 1, stage
        assert _value(samples, "wallet_partitions_owned") == stack.partitions
        lags = [_value(samples, "wallet_consumer_lag_records", partition=str(p))
                for p in range(stack.partitions)]  # fmt: skip
        assert lags == [0.0] * stack.partitions
        assert _value(samples, "wallet_outbox_backlog_messages") == 0
        assert _value(samples, "wallet_rebalances_total", event="assigned") >= 1
        assert _value(samples, "wallet_batch_failures_total") == 0


class TestProjectorMetrics:
    async def test_projected_entries_and_lag(self, stack: Settings) -> None:
        """The projector counts the entries it applied (two per accepted command) and reports
        each partition's lag, 0 once it caught up."""
        processor_port, projector_port = free_port(), free_port()
        with (
            _role(stack, "processor", processor_port, {}),
            _role(stack, "projector", projector_port, {}),
        ):
            async with client_for(stack) as client:
                await send_all(client, [command("top_up", f"p{i}", 10) for i in range(4)])
            for _ in range(300):
                samples = await _scrape(projector_port)
                if _value(samples, "wallet_projected_entries_total") >= 8:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # the lag gauge is refreshed every second
            samples = await _scrape(projector_port)
        assert _value(samples, "wallet_projected_entries_total") == 8
        lags = {dict(labels)["partition"]: value for (name, labels), value in samples.items()
                if name == "wallet_projector_lag_seconds"}  # fmt: skip
        assert lags and set(lags.values()) == {0.0}


class TestApiMetrics:
    async def test_requests_are_counted_by_route_template(self, stack: Settings) -> None:
        """Requests are labelled with the route template, never the raw path: a user id or an
        unknown path does not create a label of its own."""
        port = free_port()
        api = WalletProcess(stack, "api", env={"WALLET_API_PORT": str(port)})
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                await _scrape(port, until="wallet_http_requests_total", timeout_s=60)
                for user in ("ana", "bob"):
                    await http.get(f"/wallet/{user}/balance")  # 401: no key
                await http.get("/no/such/path/xyz")
                samples = _parse((await http.get("/metrics")).text)
        finally:
            api.stop()
        requests = "wallet_http_requests_total"
        balance = {"method": "GET", "route": "/wallet/{userId}/balance", "status": "401"}
        assert _value(samples, requests, **balance) == 2
        assert _value(samples, requests, method="GET", route="unmatched", status="404") == 1
        assert not any("ana" in str(labels) for _, labels in samples)


class TestHealthcheck:
    async def test_healthcheck_follows_the_metrics_port(self, stack: Settings) -> None:
        """`wallet healthcheck` exits 0 against a running processor's metrics port and 1 when
        nothing answers there."""
        port = free_port()
        with _role(stack, "processor", port, {}):
            await _healthy(port)
            env = {"WALLET_METRICS_PORT": str(port)}
            healthy = await asyncio.to_thread(run_wallet, stack, "healthcheck", env=env)
        assert healthy.returncode == 0, healthy.stderr
        assert '"role":"processor"' in healthy.stdout
        env = {"WALLET_METRICS_PORT": str(free_port())}
        down = await asyncio.to_thread(run_wallet, stack, "healthcheck", env=env)
        assert down.returncode == 1 and "Connection refused" in down.stderr
