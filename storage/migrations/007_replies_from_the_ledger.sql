-- Replies and ledger events are rebuilt from the idempotency record instead of stored beside
-- it. Each command used to write about 1 KB of reply and event JSON into the outbox, a fourth
-- row with its own index entry, all of it a copy of what processed_commands already holds.
-- Now a command's record carries the three facts the copy added (the partition's generation,
-- the topic to reply to, the account version after it) and the outbox keeps only what no
-- record can rebuild: dead letters and the replies to repeated idempotency keys.
-- Records written before this migration keep their outbox rows (generation stays NULL).
-- `wallet verify` checks that the recorded version is the one the user's entry carries.
ALTER TABLE processed_commands
    ADD COLUMN generation integer,
    ADD COLUMN reply_topic text,
    ADD COLUMN version bigint CHECK (version >= 1),
    ADD CONSTRAINT processed_commands_version_when_accepted
        CHECK (generation IS NULL OR (status = 'accepted') = (version IS NOT NULL));

-- The relay's recovery reads a partition's records past its published watermark, in order.
CREATE INDEX processed_commands_position
    ON processed_commands (topic, partition, generation, source_offset)
    WHERE generation IS NOT NULL;

-- Everything committed and not yet published, whichever table holds it: what `wallet status`
-- counts as the backlog and `wallet verify` checks is empty after a grace period.
CREATE VIEW unpublished_messages AS
SELECT o.topic, o.partition, o.generation, o.source_offset, o.created_at
  FROM outbox o
  LEFT JOIN outbox_positions p USING (topic, partition)
 WHERE (o.generation, o.source_offset)
       >= (coalesce(p.published_generation, 0), coalesce(p.published_offset, 0))
UNION ALL
SELECT c.topic, c.partition, c.generation, c.source_offset, c.processed_at
  FROM processed_commands c
  LEFT JOIN outbox_positions p USING (topic, partition)
 WHERE c.generation IS NOT NULL
   AND (c.generation, c.source_offset)
       >= (coalesce(p.published_generation, 0), coalesce(p.published_offset, 0));
