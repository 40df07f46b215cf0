-- The ledger: assets, processed commands (idempotency records and transaction headers),
-- double-entry ledger entries, per-partition consumer state (offsets, owner epochs) and the
-- transactional outbox. The ledger's integrity rules (README, "How the guarantees are kept")
-- are enforced here as a second line
-- behind the processor's own checks.

CREATE TABLE assets (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Z][A-Z0-9_]{0,31}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO assets (code, name) VALUES ('GOLD', 'Gold Coins'), ('DIAMONDS', 'Diamonds');

-- One row per valid command decided (accepted or rejected): the idempotency record.
-- An accepted row is also the transaction header its ledger entries belong to.
CREATE TABLE processed_commands (
    user_id          text NOT NULL,
    idempotency_key  text NOT NULL,
    command_id       uuid NOT NULL,
    type             text NOT NULL CHECK (type IN ('top_up', 'bonus', 'spend')),
    asset            text NOT NULL,
    amount           bigint NOT NULL CHECK (amount BETWEEN 1 AND 1000000000000000),
    payload_hash     bytea NOT NULL,
    status           text NOT NULL CHECK (status IN ('accepted', 'rejected')),
    error_code       text,
    error_message    text,
    transaction_id   uuid UNIQUE,
    balance_after    bigint CHECK (balance_after >= 0),
    description      text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    topic            text NOT NULL,
    partition        integer NOT NULL,
    source_offset    bigint NOT NULL,
    processed_at     timestamptz NOT NULL,
    PRIMARY KEY (user_id, idempotency_key),
    CHECK ((status = 'accepted') = (transaction_id IS NOT NULL)),
    CHECK ((status = 'rejected') = (error_code IS NOT NULL))
);

-- Double entry: each accepted command writes a user leg and a system leg that sum to zero.
-- User legs carry the running balance and the account version (+1 per entry, unique).
CREATE TABLE ledger_entries (
    entry_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  uuid NOT NULL,
    partition       integer NOT NULL,
    asset           text NOT NULL,
    account_kind    text NOT NULL CHECK (account_kind IN ('user', 'treasury', 'bonus_pool', 'revenue')),
    user_id         text,
    amount          bigint NOT NULL CHECK (amount <> 0),
    balance_after   bigint,
    version         bigint,
    created_at      timestamptz NOT NULL,
    CHECK ((account_kind = 'user') = (user_id IS NOT NULL)),
    CHECK (account_kind <> 'user' OR (balance_after >= 0 AND version >= 1)),
    CHECK (account_kind = 'user' OR (balance_after IS NULL AND version IS NULL))
);

-- Rule 5's last line: two writers can never both write version N of one account.
CREATE UNIQUE INDEX ledger_entries_account_version
    ON ledger_entries (user_id, asset, version) WHERE account_kind = 'user';
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
-- A partition's entries in commit order: one writer per partition commits its batches one after
-- another, so within a partition entry ids only grow and none becomes visible late.
CREATE INDEX ledger_entries_partition_order ON ledger_entries (partition, entry_id);
-- A user's history, newest first.
CREATE INDEX ledger_entries_user_history ON ledger_entries (user_id, entry_id)
    WHERE account_kind = 'user';

-- Set-based checks once per INSERT/COPY statement (cheap: one pass over the new rows).
CREATE FUNCTION ledger_entries_check_batch() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    SELECT n.transaction_id::text INTO bad
      FROM new_entries n
     GROUP BY n.transaction_id, n.asset
    HAVING sum(n.amount) <> 0 OR count(*) <> 2
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entries of transaction % do not balance', bad
            USING ERRCODE = 'check_violation';
    END IF;

    -- LATERAL lookups, one per new row, through the unique indexes: the cost of a batch stays
    -- proportional to the batch, however large the ledger has grown. (LIMIT 1 keeps each one a
    -- parameterised subquery instead of letting the planner flatten it into a join.)
    SELECT n.transaction_id::text INTO bad
      FROM new_entries n
      LEFT JOIN LATERAL (
            SELECT c.user_id, c.amount, c.balance_after FROM processed_commands c
             WHERE c.transaction_id = n.transaction_id AND c.asset = n.asset
               AND c.status = 'accepted' LIMIT 1) c ON true
     WHERE c.user_id IS NULL
        OR (n.account_kind = 'user' AND (n.user_id <> c.user_id
            OR abs(n.amount) <> c.amount OR n.balance_after <> c.balance_after))
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entries of transaction % do not match an accepted command', bad
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    -- Running balance: each user entry continues from the account's previous version.
    SELECT n.transaction_id::text INTO bad
      FROM new_entries n
      LEFT JOIN LATERAL (
            SELECT p.balance_after FROM ledger_entries p
             WHERE p.account_kind = 'user' AND p.user_id = n.user_id
               AND p.asset = n.asset AND p.version = n.version - 1 LIMIT 1) p ON true
     WHERE n.account_kind = 'user'
       AND CASE WHEN n.version = 1 THEN n.balance_after <> n.amount
                ELSE p.balance_after IS NULL OR p.balance_after + n.amount <> n.balance_after END
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'entry of transaction % does not continue its account''s balance', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;

-- Why these settings: the tables grow from empty, and statistics taken while they held a few
-- rows once made the planner scan processed_commands whole for every new entry (quadratic: a
-- batch took seconds). Index lookups are always right here, so plan each run afresh and never
-- choose a sequential scan.
ALTER FUNCTION ledger_entries_check_batch()
    SET plan_cache_mode = force_custom_plan
    SET enable_seqscan = off;

CREATE TRIGGER ledger_entries_check_batch
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_check_batch();

-- Rule 7: the ledger is append-only. Corrections are new events.
CREATE FUNCTION refuse_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER processed_commands_append_only
    BEFORE UPDATE OR DELETE ON processed_commands
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER processed_commands_no_truncate
    BEFORE TRUNCATE ON processed_commands
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();

-- Per partition of the commands topic: the owner epoch (fencing), the next offset to consume
-- (stored with the events it produced: exactly-once effect), and a fingerprint of the record
-- before it (to notice a log that was replaced).
CREATE TABLE partition_state (
    topic                 text NOT NULL,
    partition             integer NOT NULL CHECK (partition >= 0),
    owner_epoch           bigint NOT NULL DEFAULT 0,
    owner                 text,
    generation            integer NOT NULL DEFAULT 0,
    next_offset           bigint NOT NULL DEFAULT 0 CHECK (next_offset >= 0),
    last_fingerprint      bytea,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- How far each partition's outbox is published: rows before (generation, offset) are out.
-- A table of its own so the relay's updates never wait on a batch commit's row lock.
CREATE TABLE outbox_positions (
    topic                 text NOT NULL,
    partition             integer NOT NULL,
    published_generation  integer NOT NULL,
    published_offset      bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Every time a partition's log was found replaced (broker restarted with an in-memory log, or
-- the topic deleted and recreated), and what the processor did about it.
CREATE TABLE partition_resets (
    reset_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    old_generation  integer NOT NULL,
    old_next_offset bigint NOT NULL,
    log_end_offset  bigint,
    reason          text NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: one row per consumed message that needs publishing (its reply, its
-- ledger event, its dead letter), written in the batch transaction and published after it.
CREATE TABLE outbox (
    topic          text NOT NULL,
    partition      integer NOT NULL,
    generation     integer NOT NULL,
    source_offset  bigint NOT NULL,
    message_key    bytea,
    reply_topic    text,
    reply_value    bytea,
    event_value    bytea,
    dlq_value      bytea,
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (topic, partition, generation, source_offset)
);
