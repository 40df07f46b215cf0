"""The write side: partition workers, the pure decision function, the event store, the outbox."""
