"""Settings validation."""

from __future__ import annotations

import pytest

from foundation.errors import ConfigError
from foundation.settings import load_settings


class TestSettings:
    def test_bad_value_names_the_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad WALLET_PARTITIONS fails at start with the variable's name."""
        monkeypatch.setenv("WALLET_PARTITIONS", "zero")
        with pytest.raises(ConfigError, match="WALLET_PARTITIONS"):
            load_settings(_env_file=None)

    def test_topics_must_differ(self) -> None:
        """Replies on the commands topic would loop; the settings refuse it."""
        with pytest.raises(ConfigError, match="must all differ"):
            load_settings(_env_file=None, replies_topic="wallet.commands")

    @pytest.mark.parametrize("name", [".", "..", "t" * 250, "a b", ""])
    def test_topic_names_kafka_refuses(self, name: str) -> None:
        """Names Kafka would refuse ("." and ".." pass a character check) fail at start."""
        with pytest.raises(ConfigError, match="WALLET_REPLIES_TOPIC"):
            load_settings(_env_file=None, replies_topic=name)

    def test_defaults(self) -> None:
        """The documented defaults hold."""
        settings = load_settings(_env_file=None)
        assert settings.commands_topic == "wallet.commands" and settings.partitions == 12
