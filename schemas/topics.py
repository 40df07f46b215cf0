"""Default topic names and the rule every topic name must follow."""

DEFAULT_COMMANDS_TOPIC = "wallet.commands"
DEFAULT_REPLIES_TOPIC = "wallet.replies"
DEFAULT_EVENTS_TOPIC = "wallet.events"
DEFAULT_DLQ_TOPIC = "wallet.commands.dlq"

# Kafka's own rule for topic names (legal characters, at most 249 of them).
TOPIC_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"
