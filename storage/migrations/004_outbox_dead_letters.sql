-- The latest dead letters, for `wallet status`, without reading the whole outbox: it keeps up
-- to WALLET_OUTBOX_KEEP_ROWS published rows per partition (1.2 million by default), each with
-- its reply and event, and dead letters are few. Partial: rows without a dead letter (nearly
-- all of them) never enter this index, so the write path does not pay for it.
CREATE INDEX outbox_dead_letters ON outbox (topic, created_at) WHERE dlq_value IS NOT NULL;
