"""The embedded development stack: no server outlives the process that started it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wallet.embedded_kafka import missing_tools

_STARTER = """
import sys, time
from pathlib import Path
from wallet.devstack import TansuBroker, EmbeddedPostgres
from wallet.embedded_kafka import KafkaCluster, missing_tools
folder = Path(sys.argv[1])
servers = [TansuBroker(folder / "broker.log"), EmbeddedPostgres(folder / "pg", durable=False)]
if missing_tools() is None:
    servers.append(KafkaCluster(folder / "kafka"))
for server in servers:
    server.start()
print(*(server.proc.pid for server in servers), servers[1]._socket_dir, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
class TestNoOrphans:
    def test_servers_stop_when_their_starter_is_killed(self, tmp_path: Path) -> None:
        """kill -9 of the process that started the embedded PostgreSQL and brokers (Tansu, and
        Kafka where Java is) stops them all: a killed `wallet up` or test run leaves no server
        behind."""
        starter = subprocess.Popen([sys.executable, "-c", _STARTER, str(tmp_path)],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert starter.stdout is not None
            *started, socket_dir = starter.stdout.readline().split()
            pids = [int(p) for p in started]
        finally:
            starter.kill()
            starter.wait(10)
        shutil.rmtree(socket_dir, ignore_errors=True)  # its owner died before removing it
        assert len(pids) == (3 if missing_tools() is None else 2), "a server did not start"
        deadline_s = time.monotonic() + 15
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline_s:
            time.sleep(0.1)
        assert not any(_running(pid) for pid in pids), "a server outlived its starter"
