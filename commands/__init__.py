"""The producer side: a Python client that publishes commands and awaits their replies, and
the HTTP write routes built on it. Above messaging."""
