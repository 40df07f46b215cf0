"""JSON Schema of the wire contracts, for producers and consumers written in other languages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from schemas.alerts import Alert
from schemas.commands import Command
from schemas.dead_letters import DeadLetter
from schemas.events import LedgerEvent
from schemas.replies import Reply

SCHEMA_VERSION = 1
SCHEMA_DIR = Path(__file__).parent / "json"
CONTRACTS: dict[str, type[BaseModel]] = {
    "command": Command,
    "reply": Reply,
    "event": LedgerEvent,
    "dead_letter": DeadLetter,
    "alert": Alert,
}


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one contract, with its id and version."""
    model = CONTRACTS[name]
    schema = model.model_json_schema(mode="validation")
    schema["$id"] = f"https://dino-wallet.invalid/schemas/v{SCHEMA_VERSION}/{name}.schema.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["x-schema-version"] = SCHEMA_VERSION
    return schema


def render(name: str) -> bytes:
    """The committed file's exact bytes (sorted keys, indented, newline at the end)."""
    return (
        orjson.dumps(json_schema(name), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.schema.json"


def write_all() -> list[Path]:
    """Regenerate every committed schema file."""
    written = []
    for name in CONTRACTS:
        path = schema_path(name)
        path.write_bytes(render(name))
        written.append(path)
    return written
