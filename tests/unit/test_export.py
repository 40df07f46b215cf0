"""The committed JSON Schemas: versioned, equal to the models, and valid for real messages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import jsonschema
import orjson
import pytest

from schemas.commands import Command, CommandType
from schemas.export import CONTRACTS, SCHEMA_VERSION, render, schema_path


def _committed(name: str) -> dict[str, Any]:
    return dict(orjson.loads(schema_path(name).read_bytes()))


def _command() -> dict[str, Any]:
    command = Command(
        command_id=uuid.uuid4(), idempotency_key="order-1", type=CommandType.TOP_UP,
        user_id="mia", asset="GOLD", amount=100, sent_at=datetime.now(UTC),
    )  # fmt: skip
    return dict(orjson.loads(command.encode()))


class TestSchemaFiles:
    @pytest.mark.parametrize("name", sorted(CONTRACTS))
    def test_committed_schema_matches_the_model(self, name: str) -> None:
        """The JSON Schema files in the repo are exactly what the models export."""
        assert schema_path(name).read_bytes() == render(name), "run `wallet schema --write`"

    @pytest.mark.parametrize("name", sorted(CONTRACTS))
    def test_each_file_names_its_version(self, name: str) -> None:
        """Each schema carries its contract version in its `$id` and `x-schema-version`."""
        schema = _committed(name)
        assert schema["x-schema-version"] == SCHEMA_VERSION
        assert f"/v{SCHEMA_VERSION}/{name}.schema.json" in schema["$id"]
        jsonschema.Draft202012Validator.check_schema(schema)


class TestValidation:
    def test_a_real_command_is_valid(self) -> None:
        """The JSON a producer sends, as the Python client encodes it, passes the file."""
        jsonschema.validate(_command(), _committed("command"))

    @pytest.mark.parametrize(
        "change",
        [{"amount": "100"}, {"amount": 1.5}, {"amount": 0}, {"type": "steal"},
         {"asset": "gold"}, {"extra": 1}],
    )  # fmt: skip
    def test_what_the_decoder_refuses_the_file_refuses(self, change: dict[str, Any]) -> None:
        """A string or fractional amount, zero, an unknown type, a lower-case asset or an
        unknown field fail the schema as they fail the processor's decoder."""
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(_command() | change, _committed("command"))
