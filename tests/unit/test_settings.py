"""Settings validation and the committed JSON Schemas."""

from __future__ import annotations

import pytest

from schemas.export import CONTRACTS, render, schema_path
from wallet.errors import ConfigError
from wallet.settings import load_settings


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

    def test_defaults(self) -> None:
        """The documented defaults hold."""
        settings = load_settings(_env_file=None)
        assert settings.commands_topic == "wallet.commands" and settings.partitions == 12


class TestSchemaFiles:
    @pytest.mark.parametrize("name", sorted(CONTRACTS))
    def test_committed_schema_matches_the_model(self, name: str) -> None:
        """The JSON Schema files in the repo are exactly what the models export."""
        assert schema_path(name).read_bytes() == render(name), "run `wallet schema --write`"
