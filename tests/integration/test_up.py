"""`wallet up` as a newcomer runs it: the whole stack on the embedded broker, stopped by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wallet.devstack import free_port, stop_process

UP_TIMEOUT_S = 180.0


def _env(api_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    return env | {"WALLET_API_PORT": str(api_port)}


def _wait_for_line(proc: subprocess.Popen[str], text: str) -> list[str]:
    """The output lines up to the first holding `text` (the process must not end first)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("wallet up ended early:\n" + "".join(lines))
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError("wallet up did not get there in time:\n" + "".join(lines))


@pytest.fixture
def running_up(tmp_path: Path, on_tansu: bool) -> Iterator[subprocess.Popen[str]]:
    """`wallet up` in an empty folder, on the session's kind of embedded broker."""
    if os.environ.get("WALLET_KAFKA_BOOTSTRAP") or os.environ.get("WALLET_DATABASE_URL"):
        pytest.skip("starts its own embedded services")
    broker = "tansu" if on_tansu else "kafka"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wallet", "up", "--broker", broker],
        cwd=tmp_path, env=_env(free_port()), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    yield proc
    stop_process(proc, signal.SIGINT)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.mark.also_tansu
class TestUp:
    def test_runs_the_stack_and_stops_on_ctrl_c(
        self, running_up: subprocess.Popen[str], on_tansu: bool
    ) -> None:
        """The banner names the broker, a command goes through, and Ctrl-C stops everything."""
        lines = _wait_for_line(running_up, "Running. Press Ctrl-C to stop.")
        output = "".join(lines)
        assert ("Tansu" if on_tansu else "Apache Kafka 4.1.1") in output
        assert '"status": "accepted"' in output or '"status": "duplicate"' in output
        running_up.send_signal(signal.SIGINT)
        rest, _ = running_up.communicate(timeout=60)
        assert running_up.returncode == 0 and "Stopped." in rest, rest

    def test_second_up_on_a_taken_port_closes_its_clients(
        self, running_up: subprocess.Popen[str], tmp_path: Path
    ) -> None:
        """A second `wallet up` (finding the first one's services) whose API port is taken
        says so in one error and closes its Kafka clients on the way out."""
        lines = _wait_for_line(running_up, "Running. Press Ctrl-C to stop.")
        found = re.search(r"HTTP API\s*: http://[\d.]+:(\d+)", "".join(lines))
        assert found is not None
        port = found.group(1)
        second = subprocess.run(
            [sys.executable, "-m", "wallet", "up"], cwd=tmp_path, env=_env(int(port)),
            capture_output=True, text=True, timeout=UP_TIMEOUT_S, check=False,
        )  # fmt: skip
        output = second.stdout + second.stderr
        assert second.returncode != 0 and "WALLET_API_PORT" in output, output
        assert "Unclosed" not in output and "Traceback" not in output, output
