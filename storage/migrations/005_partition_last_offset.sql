-- The offset of the last record a partition's batches processed. It was next_offset - 1 while
-- the processor assumed gap-free offsets; on Kafka, transaction commit and abort markers,
-- aborted records and compaction all take offsets no consumer ever sees, so the stored
-- position (one past what the consumer has read, markers included) and the last processed
-- record part ways. A new owner re-reads the record at last_offset to check the log is the
-- one it processed (its fingerprint), so that record's offset must be stored exactly.
ALTER TABLE partition_state ADD COLUMN last_offset bigint CHECK (last_offset >= 0);
UPDATE partition_state SET last_offset = next_offset - 1 WHERE last_fingerprint IS NOT NULL;
ALTER TABLE partition_state ADD CONSTRAINT partition_state_last_offset_known
    CHECK ((last_offset IS NULL) = (last_fingerprint IS NULL) AND last_offset < next_offset);
