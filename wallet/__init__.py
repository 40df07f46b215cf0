"""The top floor, entry points only: the `wallet` command, the HTTP app, the long-lived roles,
the embedded development stack, the bench and the operator commands. Nothing imports it."""
