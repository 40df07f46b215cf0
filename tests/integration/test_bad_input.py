"""Hostile and malformed commands: each is answered or dead-lettered, nothing reaches the ledger."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import orjson

from foundation.settings import Settings
from tests.integration.helpers import client_for, command, fetch, read_topic, running_processor


def _valid(reply_to: str) -> dict[str, Any]:
    doc = orjson.loads(command("top_up", "mallory", 5).encode())
    doc["reply_to"] = reply_to
    return doc


def _variants(reply_to: str) -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    for name, amount in [("zero", 0), ("negative", -5), ("fraction", 1.5), ("string", "5"),
                         ("text", "abc"), ("boolean", True), ("1e17", 1e17), ("1e20", 1e20),
                         ("huge_int", 10**20)]:  # fmt: skip
        cases[f"amount_{name}"] = {**_valid(reply_to), "amount": amount}
    for field in ("amount", "user_id", "asset"):
        doc = _valid(reply_to)
        del doc[field]
        cases[f"missing_{field}"] = doc
    cases["unknown_type"] = {**_valid(reply_to), "type": "steal"}
    cases["long_key"] = {**_valid(reply_to), "idempotency_key": "k" * 5000}
    cases["unknown_field"] = {**_valid(reply_to), "is_admin": True}
    cases["one_megabyte"] = {**_valid(reply_to), "description": "x" * 1_000_000}
    # What PostgreSQL cannot store: once stalled a partition for good (each batch retried).
    cases["nul_in_metadata_value"] = {**_valid(reply_to), "metadata": {"note": "a\x00b"}}
    cases["nul_in_metadata_key"] = {**_valid(reply_to), "metadata": {"a\x00": 1}}
    # A JavaScript substring through an emoji: was dead-lettered as not_json, unanswered.
    cases["lone_surrogate"] = {**_valid(reply_to), "description": "a\ud800b"}
    for doc in cases.values():
        doc["command_id"] = str(uuid.uuid4())
    return cases


class TestBadInput:
    async def test_every_bad_message_is_refused_and_nothing_is_written(
        self, stack: Settings
    ) -> None:
        """Invalid commands (NUL in metadata and lone surrogates included) get invalid_command
        replies, undecodable ones go to the DLQ only, and the partition goes on."""
        cases = _variants(stack.replies_topic)
        undecodable = [b"\xff\xfe\xfd not utf-8", b"not json at all", b"[1, 2, 3]"]
        async with running_processor(stack), client_for(stack) as client:
            futures = {
                name: await client.publish_raw(b"mallory", _encode(doc), doc["command_id"])
                for name, doc in cases.items()
            }
            for raw in undecodable:
                await client.publish_raw(b"mallory", raw)
            unknown = await client.request(command("top_up", "mallory", 5, asset="NOPE"))
            replies = {n: await asyncio.wait_for(f, 30) for n, f in futures.items()}
            after = await client.request(command("top_up", "mallory", 5))  # still running
        for name, reply in replies.items():
            assert reply["status"] == "rejected", name
            assert reply["error"]["code"] == "invalid_command", name
            assert reply["error"]["message"], name
        assert unknown.error is not None and unknown.error.code == "unknown_asset"
        assert after.status == "accepted" and after.balance == 5
        entries = await fetch(stack, "SELECT count(*) AS n FROM ledger_entries")
        assert entries[0]["n"] == 2  # only the final valid top-up
        dead = await read_topic(stack, stack.dlq_topic, len(cases) + len(undecodable))
        codes = sorted(orjson.loads(v)["code"] for v in dead)
        assert codes.count("not_utf8") == 1 and codes.count("not_json") == 1
        assert codes.count("too_large") == 1 and codes.count("not_an_object") == 1
        assert len(dead) == len(cases) + len(undecodable)

    async def test_repeated_keys_and_other_command_id_spellings(self, stack: Settings) -> None:
        """A repeated key (top level or in metadata) and each other spelling of a command_id
        (upper case, braces, urn:uuid:, 32 hex digits) get an invalid_command reply carrying
        the command_id exactly as sent; none reaches the ledger."""
        texts: dict[str, str] = {}
        for name, old, new in [
            ("amount", '"amount": 5', '"amount": 1, "amount": 5'),
            ("metadata", '"metadata": {}', '"metadata": {"a": 1, "a": 2}'),
        ]:
            doc = {**_valid(stack.replies_topic), "command_id": str(uuid.uuid4()), "metadata": {}}
            texts[f"repeated_{name}"] = json.dumps(doc).replace(old, new)  # fmt: skip
        plain = uuid.uuid4()
        for name, spelling in [("upper", str(plain).upper()), ("braces", f"{{{plain}}}"),
                               ("urn", plain.urn), ("hex", plain.hex)]:  # fmt: skip
            doc = {**_valid(stack.replies_topic), "command_id": spelling}
            texts[f"spelled_{name}"] = json.dumps(doc)
        async with running_processor(stack), client_for(stack) as client:
            futures = {}
            for name, text in texts.items():
                sent_id = json.loads(text)["command_id"]
                futures[name] = await client.publish_raw(b"mallory", text.encode(), sent_id)
            replies = {n: await asyncio.wait_for(f, 30) for n, f in futures.items()}
        for name, reply in replies.items():
            assert reply["error"]["code"] == "invalid_command", name
            assert reply["command_id"] == json.loads(texts[name])["command_id"], name
        assert "repeats the key 'amount'" in replies["repeated_amount"]["error"]["message"]
        assert "repeats the key 'a'" in replies["repeated_metadata"]["error"]["message"]
        assert "canonical" in replies["spelled_upper"]["error"]["message"]
        entries = await fetch(stack, "SELECT count(*) AS n FROM ledger_entries")
        assert entries[0]["n"] == 0

    async def test_key_must_be_the_user_id(self, stack: Settings) -> None:
        """A command keyed by something else is refused (it could split a user's partition)."""
        doc = _valid(stack.replies_topic)
        async with running_processor(stack), client_for(stack) as client:
            future = await client.publish_raw(b"someone-else", _encode(doc), doc["command_id"])
            reply = await asyncio.wait_for(future, 30)
        assert reply["status"] == "rejected"
        assert "key" in reply["error"]["message"]


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()  # the standard library writes integers past 64 bits
