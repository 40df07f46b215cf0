"""Processor subprocesses for crash and scale-out tests: started and stopped by these tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from foundation.settings import Settings
from wallet.devstack import stop_process

# Every process's folder (its log) lives under this one, removed when the test session ends.
PROCESS_ROOT = Path(tempfile.mkdtemp(prefix="wallet-procs-"))

_PASSED_SETTINGS = [
    "database_url", "kafka_bootstrap", "commands_topic", "replies_topic", "events_topic",
    "dlq_topic", "alerts_topic", "partitions", "consumer_group", "producer_idempotence",
    "session_timeout_ms",
    "heartbeat_interval_ms", "db_timeout_ms", "kafka_timeout_ms",
]  # fmt: skip


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLET_")}
    for name in _PASSED_SETTINGS:
        value = getattr(settings, name)
        env[f"WALLET_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    env["WALLET_LOG_LEVEL"] = "info"
    return env


class WalletProcess:
    """`wallet ROLE` in its own process, in an empty folder (no stack.env to pick up)."""

    def __init__(
        self, settings: Settings, role: str = "processor", env: dict[str, str] | None = None
    ) -> None:
        self._cwd = Path(tempfile.mkdtemp(prefix=f"{role}-", dir=PROCESS_ROOT))
        self.log_path = self._cwd / f"{role}.log"
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wallet", role],
                cwd=self._cwd,
                env=settings_env(settings) | (env or {}),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """kill -9: no goodbye to the group, no flush, no commit."""
        self.proc.kill()
        self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process freezes mid-whatever, as in a long GC pause or a VM stall."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.resume()  # a stopped process cannot act on SIGTERM
        stop_process(self.proc, signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def run_wallet(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`wallet ARGS` to completion, as an operator types it."""
    return subprocess.run(
        [sys.executable, "-m", "wallet", *args],
        env=settings_env(settings) | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
