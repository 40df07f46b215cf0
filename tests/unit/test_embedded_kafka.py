"""The embedded Apache Kafka's pure parts: tool checks, cache location, node configuration."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from wallet import embedded_kafka
from wallet.embedded_kafka import (
    KafkaCluster,
    KafkaNode,
    cache_dir,
    cluster_id,
    java_major,
    missing_tools,
)


class TestJavaVersion:
    def test_modern_version_string(self) -> None:
        """`java -version` of Java 9 and later gives its major version first."""
        assert java_major('openjdk version "17.0.15" 2025-04-15') == 17
        assert java_major('openjdk version "21" 2023-09-19') == 21

    def test_legacy_version_string(self) -> None:
        """Java 8 and older print 1.N: the major version is N."""
        assert java_major('java version "1.8.0_402"') == 8

    def test_unreadable_output(self) -> None:
        """Output without a version gives None, which counts as missing."""
        assert java_major("bash: java: command not found") is None


class TestMissingTools:
    def test_names_what_to_install_without_java(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without java or mvn on PATH the answer is one line naming both and the fallback."""
        monkeypatch.setenv("PATH", "/nonexistent")
        problem = missing_tools()
        assert problem is not None and "\n" not in problem
        assert "Java 17+" in problem and "Maven" in problem
        assert "WALLET_EMBEDDED_BROKER=tansu" in problem

    def test_old_java_is_refused(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A Java older than 17 on PATH is reported with the version found."""
        for name, script in {
            "java": "#!/bin/sh\necho 'java version \"1.8.0_402\"' >&2\n",
            "mvn": "#!/bin/sh\nexit 0\n",
        }.items():
            (tmp_path / name).write_text(script)
            (tmp_path / name).chmod(0o755)
        monkeypatch.setenv("PATH", str(tmp_path))
        problem = missing_tools()
        assert problem is not None and "found Java 8" in problem


class TestCacheDir:
    def test_outside_the_repository_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Jars go to the user's cache folder, named by the pinned Kafka version."""
        monkeypatch.delenv("WALLET_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/someone")
        assert cache_dir() == Path(
            f"/var/cache/someone/dino-wallet/kafka-{embedded_kafka.KAFKA_VERSION}"
        )

    def test_setting_overrides(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """WALLET_CACHE_DIR picks the folder (a CI cache, say)."""
        monkeypatch.setenv("WALLET_CACHE_DIR", "/ci/cache")
        assert cache_dir() == Path(f"/ci/cache/kafka-{embedded_kafka.KAFKA_VERSION}")


class TestNodeProperties:
    def test_single_node_replicates_internal_topics_once(self, tmp_path: Path) -> None:
        """One node: internal topics with replication 1, on loopback listeners only, and no
        topic created because a client asked for it."""
        node = KafkaNode(1, tmp_path / "node-1", port=9092, controller_port=9093)
        lines = dict(
            line.split("=", 1) for line in node.properties("1@127.0.0.1:9093", 1).splitlines()
        )
        assert lines["process.roles"] == "broker,controller"
        assert lines["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
        assert lines["offsets.topic.replication.factor"] == "1"
        assert lines["transaction.state.log.min.isr"] == "1"
        assert lines["log.dirs"] == str(tmp_path / "node-1" / "data")
        assert lines["auto.create.topics.enable"] == "false"

    def test_three_nodes_are_all_voters(self, tmp_path: Path) -> None:
        """A three-node cluster lists every node as a controller voter and replicates its
        internal topics three times with a minimum of two in sync."""
        cluster = KafkaCluster(tmp_path, size=3)
        assert len({n.port for n in cluster.nodes}) == 3
        assert cluster.bootstrap.count(",") == 2
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster.nodes)
        text = cluster.nodes[2].properties(voters, 3)
        assert f"controller.quorum.voters={voters}" in text
        assert "transaction.state.log.min.isr=2" in text and "node.id=3" in text


class TestClusterId:
    def test_never_reads_as_an_option(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An id whose base64 would start with "-" is drawn again (the storage tool would
        take it for an option)."""
        draws = iter([uuid.UUID(bytes=b"\xfb" + b"\x00" * 15), uuid.UUID(int=1)])
        monkeypatch.setattr(embedded_kafka.uuid, "uuid4", lambda: next(draws))
        found = cluster_id()
        assert len(found) == 22 and not found.startswith("-")
        assert found == "AAAAAAAAAAAAAAAAAAAAAQ"
