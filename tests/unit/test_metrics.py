"""The metrics helpers: per-partition gauges, the health probe's address and answers."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge

from foundation.errors import ConfigError
from foundation.metrics import PartitionGauge
from foundation.settings import Settings
from wallet.metrics_server import beside, health_url, metrics_app


class TestPartitionGauge:
    def test_partitions_no_longer_reported_disappear(self) -> None:
        """Setting the gauge as a whole removes a partition left out (a revoked one)."""
        registry = CollectorRegistry()
        gauge = PartitionGauge(Gauge("lag", "lag", ["partition"], registry=registry))
        gauge.set_all({0: 5, 1: 7})
        gauge.set_all({1: 2})
        assert registry.get_sample_value("lag", {"partition": "0"}) is None
        assert registry.get_sample_value("lag", {"partition": "1"}) == 2


class TestHealthUrl:
    def test_metrics_port_wins_and_wildcards_become_loopback(self) -> None:
        """A worker with a metrics port is probed there; a wildcard address through loopback."""
        worker = Settings(metrics_host="0.0.0.0", metrics_port=9100, api_port=8080)
        assert health_url(worker) == "http://127.0.0.1:9100/health"

    def test_api_port_without_metrics_port(self) -> None:
        """The API (no metrics port of its own) is probed on its port; IPv6 in brackets."""
        assert health_url(Settings(api_host="::1", api_port=8081)) == "http://[::1]:8081/health"


class TestMetricsApp:
    async def test_health_is_503_until_the_role_reports(self) -> None:
        """/health answers 503 while the role reports nothing, then 200 with its details."""
        details: dict[str, object] | None = None
        app = metrics_app("processor", lambda: details)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/health")).status_code == 503
            details = {"partitions": [0, 1]}
            ok = await http.get("/health")
            metrics = await http.get("/metrics")
        assert ok.json() == {"status": "ok", "role": "processor", "partitions": [0, 1]}
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "wallet_commands_total" in metrics.text


class TestBeside:
    async def test_a_taken_port_refuses_to_start_the_work(self) -> None:
        """A metrics port already taken is a ConfigError naming the setting, before the role
        does anything (not uvicorn's exit from inside a task)."""
        started = []

        async def work() -> None:
            started.append(True)

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            settings = Settings(metrics_port=taken.getsockname()[1])
            with pytest.raises(ConfigError, match="WALLET_METRICS_PORT"):
                await beside(settings, "processor", dict, work())
        assert started == []
