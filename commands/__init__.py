"""The producer side: a Python client that publishes commands and awaits their replies."""
