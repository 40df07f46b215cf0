"""The write side: the consumer-group member, its partition workers, the intake of records,
the narrowing of failing batches and the outbox relay. Above storage, messaging and the
ledger rules."""
