"""Decoding raw command bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import DecodeFailure, decode_command
from schemas.commands import Command
from tests.integration.helpers import command

_FIELDS = sorted(json.loads(command("top_up", "u", 5).encode()))


def _with(**changes: object) -> bytes:
    doc = json.loads(command("top_up", "u", 5).encode())
    doc.update(changes)
    return json.dumps(doc).encode()


class TestDecode:
    def test_valid_command_round_trips(self) -> None:
        """An encoded command decodes to an equal command."""
        original = command("spend", "u", 7, description="sword")
        assert decode_command(original.encode(), bytes_max=65536) == original

    @pytest.mark.parametrize("amount", [0, -5, 1.5, "5", "abc", True, 1e17, 1e20, 10**20, None])
    def test_bad_amounts_are_invalid_fields(self, amount: object) -> None:
        """Only integers from 1 to 10**15 are amounts; the envelope is still read."""
        result = decode_command(_with(amount=amount), bytes_max=65536)
        assert isinstance(result, DecodeFailure) and result.code == "invalid_fields"
        assert result.envelope.command_id is not None and result.envelope.user_id == "u"

    @pytest.mark.parametrize(
        ("raw", "code"),
        [(b"\xff\xfe", "not_utf8"), (b"nope", "not_json"), (b"[1]", "not_an_object"),
         (None, "not_json")],
    )  # fmt: skip
    def test_undecodable_bytes(self, raw: bytes | None, code: str) -> None:
        """Bytes that are not a JSON object fail with a typed code and an empty envelope."""
        result = decode_command(raw, bytes_max=65536)
        assert isinstance(result, DecodeFailure) and result.code == code
        assert result.envelope.command_id is None

    def test_oversized_message_is_too_large(self) -> None:
        """A message over the limit is refused before validation."""
        result = decode_command(_with(description="x" * 5000), bytes_max=1024)
        assert isinstance(result, DecodeFailure) and result.code == "too_large"

    @pytest.mark.parametrize(
        "changes",
        [{"extra": 1}, {"idempotency_key": "k" * 129}, {"type": "steal"}, {"asset": "gold"},
         {"user_id": ""}, {"sent_at": "2026-01-01T00:00:00"},
         {"metadata": {str(i): i for i in range(17)}}, {"metadata": {"k": 2**63}},
         {"metadata": {"k": -(2**63) - 1}}, {"metadata": {"k": "v" * 257}},
         {"metadata": {"k" * 65: 1}}, {"metadata": {f"k{i}": "v" * 200 for i in range(12)}},
         {"user_id": "u" * 129}, {"description": "d" * 513}, {"amount": 10**15 + 1},
         {"amount": 0}, {"metadata": {"k": "a\x00b"}}, {"metadata": {"a\x00": 1}},
         {"description": "a\x00b"}, {"reply_to": "."}, {"reply_to": ".."},
         {"reply_to": "r" * 250}, {"reply_to": "a b"}],
    )  # fmt: skip
    def test_contract_violations(self, changes: dict[str, object]) -> None:
        """Unknown fields, long keys, bad enums, naive times, metadata past its limits (keys,
        bytes, string and key lengths, integers past 64 bits, which JSON encoders refuse),
        long ids and descriptions, amounts out of range, a NUL anywhere (PostgreSQL cannot
        store it), reply topics Kafka refuses ("." and ".." among them): all refused."""
        assert not isinstance(decode_command(_with(**changes), bytes_max=65536), Command)


class TestReservedKeys:
    def test_the_sweeps_keys_are_refused_for_other_types(self) -> None:
        """A top-up keyed like the expiry sweep's expire is refused: it could take the key
        first and turn the sweep's expire into a refused key reuse at every pass."""
        result = decode_command(
            _with(idempotency_key="wallet-expiry-sweep:GOLD:1"), bytes_max=65536
        )
        assert isinstance(result, DecodeFailure) and result.code == "invalid_fields"

    def test_an_expire_may_use_one(self) -> None:
        """An expire with such a key decodes: the sweep's own, or a client's asking the same."""
        doc = json.loads(_with(idempotency_key="wallet-expiry-sweep:GOLD:1", type="expire"))
        del doc["amount"]
        assert isinstance(decode_command(json.dumps(doc).encode(), bytes_max=65536), Command)


class TestUnstorableText:
    def test_lone_surrogate_is_invalid_with_its_envelope(self) -> None:
        """A lone UTF-16 surrogate (a JavaScript substring through an emoji) is refused as
        invalid fields with the envelope read, so its sender gets an invalid_command reply."""
        raw = _with(description="a\ud800b")
        result = decode_command(raw, bytes_max=65536)
        assert isinstance(result, DecodeFailure) and result.code == "invalid_fields"
        assert str(result.envelope.command_id) == json.loads(raw)["command_id"]
        assert "lone surrogate" in result.reason

    def test_envelope_never_carries_unencodable_text(self) -> None:
        """A user id or key holding a lone surrogate or a NUL is left out of the envelope: the
        reply that echoes it must itself be encodable."""
        for bad in ("a\ud800", "a\x00b"):
            result = decode_command(_with(user_id=bad, idempotency_key=bad), bytes_max=65536)
            assert isinstance(result, DecodeFailure) and result.envelope.command_id is not None
            assert result.envelope.user_id is None and result.envelope.idempotency_key is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=20,
)


class TestAnyInput:
    @given(raw=st.binary(max_size=2_048))
    @settings(max_examples=500, deadline=None)
    def test_any_bytes_decode_or_fail_typed(self, raw: bytes) -> None:
        """For any byte string the decoder returns a command or a typed failure, never raises."""
        assert isinstance(decode_command(raw, bytes_max=1_024), Command | DecodeFailure)

    @given(doc=_JSON, changes=st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=4))
    @settings(max_examples=500, deadline=None)
    def test_any_json_and_damaged_commands_decode_or_fail_typed(
        self, doc: object, changes: dict[str, object]
    ) -> None:
        """Arbitrary JSON, and valid commands with fields replaced by arbitrary JSON, decode to
        a command or a typed failure."""
        for value in (doc, {**json.loads(_with()), **changes}):
            raw = json.dumps(value).encode()
            assert isinstance(decode_command(raw, bytes_max=65_536), Command | DecodeFailure)
