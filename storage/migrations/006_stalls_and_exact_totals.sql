-- System totals are exact for any volume: a treasury pays out every top-up of an asset, and
-- 9,300 top-ups of the largest amount (10^15) already pass 2^63, so a bigint total overflowed
-- and the projector failed on every retry. numeric has no such bound; per-account balances
-- stay bigint (a balance is capped at 10^18, far below 2^63).
ALTER TABLE system_totals ALTER COLUMN total TYPE numeric;
ALTER TABLE system_totals_replay ALTER COLUMN total TYPE numeric;

-- Stalls, where every role and operator can see them: failures in a row of a partition's
-- batches (written by the processor when it claims the partition again to retry, cleared by
-- the next commit) and of the projector's steps on a partition (cleared by its next step).
ALTER TABLE partition_state
    ADD COLUMN failures_in_a_row integer NOT NULL DEFAULT 0 CHECK (failures_in_a_row >= 0),
    ADD COLUMN last_error text,
    ADD COLUMN failing_since timestamptz;
ALTER TABLE projection_checkpoints
    ADD COLUMN failures_in_a_row integer NOT NULL DEFAULT 0 CHECK (failures_in_a_row >= 0),
    ADD COLUMN last_error text,
    ADD COLUMN failing_since timestamptz;

-- An operator's last resort: dead-letter one named record instead of processing it. The row
-- is the audit record (who, why, when); the processor reads the requests of a partition each
-- time it claims it, which a stalled partition does before every retry.
CREATE TABLE dead_letter_requests (
    topic          text NOT NULL,
    partition      integer NOT NULL CHECK (partition >= 0),
    generation     integer NOT NULL,
    source_offset  bigint NOT NULL CHECK (source_offset >= 0),
    reason         text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    requested_by   text NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 200),
    requested_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, generation, source_offset)
);
CREATE TRIGGER dead_letter_requests_append_only
    BEFORE UPDATE OR DELETE ON dead_letter_requests
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
