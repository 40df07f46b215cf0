"""Choosing the embedded broker: Kafka where it can run, Tansu only where allowed to fall back."""

from __future__ import annotations

import pytest

from foundation.errors import DevStackError
from wallet.stack import broker_kind


@pytest.fixture
def no_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")


class TestBrokerKind:
    def test_tansu_when_asked(self, no_java: None) -> None:
        """`tansu` needs no Java and is never second-guessed."""
        assert broker_kind("tansu") == "tansu"

    def test_auto_falls_back_with_one_line(
        self, no_java: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without Java, `auto` runs Tansu and says on one line what to install."""
        monkeypatch.delenv("CI", raising=False)
        assert broker_kind("auto") == "tansu"
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Java 17+" in err and "using the Tansu broker" in err

    def test_auto_never_falls_back_under_ci(
        self, no_java: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under CI a missing Java is an error: the suite must not quietly leave Kafka."""
        monkeypatch.setenv("CI", "true")
        with pytest.raises(DevStackError, match="Java 17"):
            broker_kind("auto")

    def test_kafka_without_java_is_an_error(
        self, no_java: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Asking for Kafka where it cannot run stops with the line naming what to install."""
        monkeypatch.delenv("CI", raising=False)
        with pytest.raises(DevStackError, match="apt-get install openjdk-17-jre-headless maven"):
            broker_kind("kafka")
