"""Default topic names and the rule every topic name must follow."""

import re

DEFAULT_COMMANDS_TOPIC = "wallet.commands"
DEFAULT_REPLIES_TOPIC = "wallet.replies"
DEFAULT_EVENTS_TOPIC = "wallet.events"
DEFAULT_DLQ_TOPIC = "wallet.commands.dlq"
DEFAULT_ALERTS_TOPIC = "wallet.alerts"

# Kafka's own rule for topic names: legal characters, at most 249 of them, and never "." or
# ".." (Kafka refuses both; a reply_to of "." once stalled every reply while the relay waited
# on it). Without look-ahead (pydantic's regex engine has none): at least one character that
# is not a dot, or three dots or more.
TOPIC_NAME_PATTERN = r"^(?:[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*|\.{3,})$"
TOPIC_NAME_CHARS_MAX = 249


def is_topic_name(value: str) -> bool:
    return (
        len(value) <= TOPIC_NAME_CHARS_MAX and re.fullmatch(TOPIC_NAME_PATTERN, value) is not None
    )
