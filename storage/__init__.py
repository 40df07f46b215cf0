"""Storage: PostgreSQL connections, the event store (the write side's port and its
implementations), the projection's tables, the schema migrations. Below the processor and the
projections; above the ledger rules and the wire contracts."""
