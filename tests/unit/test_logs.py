"""Log redaction: secret fields and secrets inside text never reach a log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from foundation.logs import REDACTED, configure_logging, redact

KEY = "dw_0123456789abcdef_" + "S" * 43


class TestRedact:
    def test_secret_named_fields_are_blanked(self) -> None:
        """Any field whose name says password, secret, token or authorization is replaced."""
        secrets = ["db_password", "Authorization", "sasl_plain_password", "api_key", "token"]
        event = redact(None, "info", {"event": "x", "user": "ana"} | dict.fromkeys(secrets, KEY))
        assert event == {"event": "x", "user": "ana"} | dict.fromkeys(secrets, REDACTED)

    def test_secrets_inside_text_are_blanked(self) -> None:
        """A URL's password and an API key's secret are cut out of any string field."""
        event = redact(None, "error", {
            "event": "could not connect to postgresql://wallet:hunter2@db:5432/wallet",
            "error": f"refused {KEY} for ana",
        })  # fmt: skip
        assert (
            event["event"] == f"could not connect to postgresql://wallet:{REDACTED}@db:5432/wallet"
        )
        assert event["error"] == f"refused dw_0123456789abcdef_{REDACTED} for ana"

    def test_text_without_secrets_is_untouched(self) -> None:
        """Ordinary URLs, user ids and messages pass as they are."""
        event = {"event": "claimed", "url": "postgresql://db:5432/wallet", "user": "x@y:z"}
        assert redact(None, "info", dict(event)) == event


@pytest.fixture
def configured() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


class TestConfiguredLogging:
    def test_structlog_and_library_logs_are_redacted_json(
        self, configured: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Both our events and a library's stdlib warning come out as redacted JSON lines."""
        configure_logging("info", "json")
        structlog.get_logger("wallet.test").info("connecting", url="postgres://u:pw1@h/d")
        logging.getLogger("aiokafka").warning("auth failed for %s", KEY)
        logging.getLogger("aiokafka").info("chatter below WARNING is dropped")
        lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert [line["event"] for line in lines] == [
            "connecting", f"auth failed for dw_0123456789abcdef_{REDACTED}"
        ]  # fmt: skip
        assert lines[0]["url"] == f"postgres://u:{REDACTED}@h/d"
        assert lines[1]["level"] == "warning" and lines[1]["logger"] == "aiokafka"
