-- Transfers between users: a saga of up to three steps (see ledger/transfers.py), each one
-- record of its own partition's writer. `transfer` debits the sender into the `transfers`
-- clearing account; `transfer_in` credits the receiver out of it (or is refused);
-- `transfer_refund` gives a refused transfer back to its sender. Each record names the
-- other user (`counterparty`) and the transfer (`transfer_id`, the debit's transaction id),
-- through which a step reads the steps before it. Each step is taken once: its key is the
-- transfer's, and a unique index says so too, whatever the planner believes.

DO $$
DECLARE
    name text;
BEGIN
    SELECT conname INTO STRICT name FROM pg_constraint
     WHERE conrelid = 'processed_commands'::regclass
       AND pg_get_constraintdef(oid) = 'CHECK (((reason IS NULL) = (type <> ''reverse''::text)))';
    EXECUTE format('ALTER TABLE processed_commands DROP CONSTRAINT %I', name);
END;
$$;

ALTER TABLE processed_commands
    DROP CONSTRAINT processed_commands_type_check,
    ADD CONSTRAINT processed_commands_type_check
        CHECK (type IN ('top_up', 'bonus', 'spend', 'expire', 'hold', 'capture', 'release',
                        'reverse', 'transfer', 'transfer_in', 'transfer_refund')),
    DROP CONSTRAINT processed_commands_amount_named,
    ADD CONSTRAINT processed_commands_amount_named
        CHECK (amount IS NOT NULL
               OR (type IN ('expire', 'release', 'reverse', 'capture', 'transfer_refund')
                   AND status = 'rejected')),
    DROP CONSTRAINT processed_commands_consumed_by_spends,
    ADD CONSTRAINT processed_commands_consumed_by_spends
        CHECK (consumed_paid IS NULL
               OR (type IN ('spend', 'capture', 'reverse', 'transfer', 'transfer_in',
                            'transfer_refund') AND status = 'accepted')),
    -- A refund's reason is the receiver's refusal ("code: message"); 009's check of it is
    -- dropped above (its name is PostgreSQL's choice).
    ADD CONSTRAINT processed_commands_reason_check
        CHECK ((reason IS NULL) = (type NOT IN ('reverse', 'transfer_refund'))),
    ADD COLUMN counterparty text,
    ADD COLUMN transfer_id uuid,
    ADD CONSTRAINT processed_commands_counterparty_of_transfers
        CHECK ((counterparty IS NULL) = (type NOT IN ('transfer', 'transfer_in',
                                                      'transfer_refund'))),
    ADD CONSTRAINT processed_commands_transfer_of_transfers
        CHECK (CASE WHEN type = 'transfer' THEN transfer_id IS NOT DISTINCT FROM transaction_id
                    WHEN type IN ('transfer_in', 'transfer_refund') THEN transfer_id IS NOT NULL
                    ELSE transfer_id IS NULL END);

-- A transfer's records, found from any of its steps.
CREATE INDEX processed_commands_transfer ON processed_commands (transfer_id)
 WHERE transfer_id IS NOT NULL;
-- The debits, and the receivers' refusals, of the last day: for `wallet status`'s transfers
-- in flight and the processors' transfer sweep (a step lost with a broker's log is sent again).
CREATE INDEX processed_commands_transfer_debits ON processed_commands (processed_at)
 WHERE type = 'transfer' AND status = 'accepted';
CREATE INDEX processed_commands_transfer_refusals ON processed_commands (processed_at)
 WHERE type = 'transfer_in' AND status = 'rejected';
-- Each step accepted once per transfer.
CREATE UNIQUE INDEX processed_commands_transfer_step_once ON processed_commands (transfer_id, type)
 WHERE status = 'accepted' AND transfer_id IS NOT NULL;

ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_account_kind_check,
    ADD CONSTRAINT ledger_entries_account_kind_check
        CHECK (account_kind IN ('user', 'treasury', 'bonus_pool', 'revenue', 'free_spent',
                                'expired', 'holds', 'receivable', 'transfers'));
ALTER TABLE system_totals DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired',
                                'holds', 'receivable', 'transfers'));
ALTER TABLE system_totals_replay DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired',
                                'holds', 'receivable', 'transfers'));

-- The key of a stored row's reply when it is not message_key (only planned rows have one
-- today, a transfer's; the column keeps the outbox's rows and the plan's alike).
ALTER TABLE outbox ADD COLUMN reply_key bytea;

-- The batch check learns the user legs of the three: a transfer moves the sender's balance
-- by minus its amount, its credit and its refund by plus theirs (then, as for every type,
-- less what expired, plus what was released, less what paid debt).
CREATE OR REPLACE FUNCTION ledger_entries_check_batch() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    SELECT n.transaction_id::text INTO bad
      FROM new_entries n
     GROUP BY n.transaction_id, n.asset
    HAVING sum(n.amount) <> 0 OR count(*) NOT BETWEEN 2 AND 8
        OR count(*) FILTER (WHERE n.account_kind = 'user') <> 1
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
            SELECT c.user_id, c.type, c.amount, c.balance_after, c.paid_after, c.expired_amount,
                   c.held_after, c.debt_after, c.released_amount, c.debt_paid, c.debt_added,
                   c.reversed_type, c.unexpired_amount
              FROM processed_commands c
             WHERE c.transaction_id = n.transaction_id AND c.asset = n.asset
               AND c.status = 'accepted' LIMIT 1) c ON true
     WHERE c.user_id IS NULL
        OR (n.account_kind = 'user' AND (n.user_id <> c.user_id
            OR n.amount <> CASE
                   WHEN c.type IN ('top_up', 'bonus', 'transfer_in', 'transfer_refund')
                       THEN c.amount
                   WHEN c.type IN ('spend', 'expire', 'hold', 'transfer') THEN -c.amount
                   WHEN c.type = 'capture' THEN 0
                   WHEN c.type = 'release' THEN c.amount
                   WHEN c.reversed_type IN ('spend', 'capture') THEN c.amount
                   ELSE coalesce(c.debt_added, 0) + coalesce(c.unexpired_amount, 0) - c.amount END
               - coalesce(c.expired_amount, 0) + coalesce(c.released_amount, 0)
               - coalesce(c.debt_paid, 0)
            OR n.balance_after <> c.balance_after
            OR n.paid_after IS DISTINCT FROM c.paid_after
            OR n.held_after IS DISTINCT FROM c.held_after
            OR n.debt_after IS DISTINCT FROM c.debt_after))
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

-- Restated after the function, as 010 says every restatement must.
ALTER FUNCTION ledger_entries_check_batch()
    SET plan_cache_mode = force_custom_plan
    SET enable_seqscan = off;
