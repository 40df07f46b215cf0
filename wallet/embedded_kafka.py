"""A real Apache Kafka for development and tests: KRaft nodes (broker and controller in one
process) run with the machine's Java from Kafka's own jars, which Maven fetches once from
Maven Central into a cache outside the repository.

One node is the development broker of `wallet up` and of the test suite; three nodes make the
replicated cluster of the fault test that kills a partition leader. Logs live on disk in each
node's folder, so a node killed with -9 and started again on the same folder keeps them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from foundation.errors import DevStackError
from wallet.devstack import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    die_with_parent,
    free_port,
    stop_process,
)

KAFKA_VERSION = "4.1.1"  # pinned: the compose file runs the same release
_SCALA_VERSION = "2.13"
_LOG4J_VERSION = "2.24.3"  # the release Kafka 4.1.1 itself depends on
JAVA_VERSION_MIN = 17
MAVEN_TIMEOUT_S = 900.0
_READY_LINE = "Kafka Server started"
INSTALL_HINT = (
    "Apache Kafka needs Java 17+ and Maven: install them (Debian: apt-get install "
    "openjdk-17-jre-headless maven), or set WALLET_EMBEDDED_BROKER=tansu"
)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dino-wallet</groupId><artifactId>embedded-kafka</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

# Kafka's own INFO lines, minus the chattiest loggers; the ready line comes from KafkaRaftServer.
_LOG4J2 = """status = warn
appender.file.type = Console
appender.file.name = STDOUT
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = warn
logger.controller.name = org.apache.kafka.controller
logger.controller.level = warn
"""


def cache_dir() -> Path:
    """Where the jars are kept: $WALLET_CACHE_DIR, else the user's cache folder."""
    root = os.environ.get("WALLET_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    if not os.environ.get("WALLET_CACHE_DIR"):
        base = base / "dino-wallet"
    return base / f"kafka-{KAFKA_VERSION}"


def java_major(version_output: str) -> int | None:
    """The major version in `java -version`'s output ("17.0.15", or "1.8.0_402" for 8)."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def missing_tools() -> str | None:
    """None when Java 17+ and Maven are here; otherwise one line naming what to install."""
    java = shutil.which("java")
    if java is None or shutil.which("mvn") is None:
        return INSTALL_HINT
    shown = subprocess.run([java, "-version"], capture_output=True, timeout=30, check=False)
    major = java_major(shown.stderr.decode(errors="replace") + shown.stdout.decode())
    if major is None or major < JAVA_VERSION_MIN:
        return f"{INSTALL_HINT} (found Java {major})"
    return None


def kafka_libs() -> Path:
    """The folder of Kafka's jars, fetched with Maven on first use (one fetch at a time)."""
    folder = cache_dir()
    libs = folder / "libs"
    if (folder / "complete").exists():
        return libs
    problem = missing_tools()
    if problem is not None:
        raise DevStackError(problem)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a test run and `wallet up` may both get here
        if not (folder / "complete").exists():
            _fetch_jars(folder, libs)
    return libs


def _fetch_jars(folder: Path, libs: Path) -> None:
    pom = folder / "pom.xml"
    pom.write_text(_POM.format(scala=_SCALA_VERSION, kafka=KAFKA_VERSION, log4j=_LOG4J_VERSION))
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=folder))
    argv = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, timeout=MAVEN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise DevStackError("Maven timed out fetching Kafka", timeout_s=MAVEN_TIMEOUT_S) from None
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
        raise DevStackError("Maven could not fetch Apache Kafka", output=output)
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (folder / "complete").write_text(KAFKA_VERSION + "\n")


@dataclass
class KafkaNode:
    """One KRaft node (broker and controller) of a cluster; see KafkaCluster."""

    node_id: int
    folder: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_start: int = 0  # where the running process's lines begin in the (appended) log

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def properties(self, voters: str, replication: int) -> str:
        listeners = (
            f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
        )
        # Internal topics as replicated as the cluster allows; few partitions for a fast start.
        min_isr = min(2, replication)
        lines = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": listeners,
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": self.folder / "data",
            "offsets.topic.replication.factor": replication,
            "offsets.topic.num.partitions": 5,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 5,
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": 0,
            # As in production: a topic exists because `wallet topics` made it, never because
            # a client asked for it (a reply_to from a producer must not create topics).
            "auto.create.topics.enable": "false",
            "num.network.threads": 2,
            "num.io.threads": 4,
        }
        return "".join(f"{key}={value}\n" for key, value in lines.items())


class KafkaCluster:
    """`size` KRaft nodes on free loopback ports, each with its log on disk under `folder`.

    A node stopped (or killed) and started again keeps its ports and its log folder.
    """

    def __init__(self, folder: Path, size: int = 1, heap_mb: int = 768) -> None:
        assert 1 <= size <= 5, size
        self.folder = folder
        self.heap_mb = heap_mb
        self.nodes = [KafkaNode(i + 1, folder / f"node-{i + 1}") for i in range(size)]
        self._cluster_id = cluster_id()
        self._libs: Path | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The first node's process (a one-node cluster is a broker like any other)."""
        return self.nodes[0].proc

    def start(self) -> str:
        self._libs = kafka_libs()
        for node in self.nodes:
            self._prepare(node)
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._wait_ready(node)
        return self.bootstrap

    def start_node(self, node: KafkaNode) -> None:
        """Start one node again on its folder and ports (after stop_node or a kill)."""
        self._launch(node)
        self._wait_ready(node)

    def stop_node(self, node: KafkaNode, sig: int = signal.SIGTERM) -> None:
        if node.proc is not None:
            if sig == signal.SIGKILL:
                node.proc.kill()
                node.proc.wait(STOP_TIMEOUT_S)
            else:
                stop_process(node.proc, sig)
            node.proc = None

    def stop(self) -> None:
        """Stop every node at once: stopped one by one, the last ones would wait for a
        quorum that is already gone before giving up."""
        running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for node in running:
            assert node.proc is not None
            node.proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node in self.nodes:
            if node.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(max(0.1, deadline - time.monotonic()))
                self.stop_node(node, signal.SIGKILL)

    def _prepare(self, node: KafkaNode) -> None:
        node.folder.mkdir(parents=True, exist_ok=True)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replication = min(3, len(self.nodes))
        (node.folder / "server.properties").write_text(node.properties(voters, replication))
        (node.folder / "log4j2.properties").write_text(_LOG4J2)
        if (node.folder / "data" / "meta.properties").exists():
            return  # formatted before: a restart keeps the log
        argv = [*self._java(node, heap_mb=256), "kafka.tools.StorageTool", "format",
                "-t", self._cluster_id, "-c", str(node.folder / "server.properties")]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise DevStackError("formatting the Kafka log folder failed", output=output)

    def _java(self, node: KafkaNode, heap_mb: int) -> list[str]:
        assert self._libs is not None
        return ["java", f"-Xms{heap_mb // 2}m", f"-Xmx{heap_mb}m", "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={node.folder / 'log4j2.properties'}",
                "-cp", f"{self._libs}/*"]  # fmt: skip

    def _launch(self, node: KafkaNode) -> None:
        assert node.proc is None or node.proc.poll() is not None, "node already running"
        properties = node.folder / "server.properties"
        argv = [*self._java(node, self.heap_mb), "kafka.Kafka", str(properties)]
        with node.log_path.open("ab") as log_file:
            node.log_start = log_file.tell()
            node.proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )  # fmt: skip

    def _wait_ready(self, node: KafkaNode) -> None:
        """Until the node logs that it started (its listener opens before it can serve)."""
        assert node.proc is not None
        offset = node.log_start
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise DevStackError("Kafka exited at start", log=str(node.log_path),
                                    code=node.proc.returncode)  # fmt: skip
            with node.log_path.open("rb") as log_file:
                log_file.seek(offset)
                chunk = log_file.read()
            if _READY_LINE.encode() in chunk:
                return
            offset += max(0, len(chunk) - len(_READY_LINE))
            time.sleep(0.1)
        raise DevStackError("Kafka did not start in time", log=str(node.log_path))


def cluster_id() -> str:
    """A cluster id as Kafka makes them: a UUID in URL-safe base64, unpadded, never starting
    with "-" (the storage tool would read it as an option: one start in 64 failed that way)."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found
