-- Expiry: a credit may carry `expires_at`; its lot stops being spendable then and is booked
-- out to the `expired` system account, once, by the first transaction of the account decided
-- at or after that time (a command's own, or an `expire` the processor's sweep sends for a
-- wallet nobody touches). Decisions use the processor's clock, recorded as processed_at.

ALTER TABLE lots ADD COLUMN expires_at timestamptz;
-- A spend rewrites its lot's `remaining` (no index holds it): room on each page lets that be
-- a heap-only update, with no new index entry.
ALTER TABLE lots SET (fillfactor = 80);
-- The sweep's question: which wallets of a partition hold a lot whose time has come.
CREATE INDEX lots_due ON lots (partition, expires_at) WHERE expires_at IS NOT NULL;

-- An `expire` names no amount: a refused one records none, an accepted one what it booked out.
ALTER TABLE processed_commands
    ALTER COLUMN amount DROP NOT NULL,
    ADD CONSTRAINT processed_commands_amount_named
        CHECK (amount IS NOT NULL OR (type = 'expire' AND status = 'rejected')),
    DROP CONSTRAINT processed_commands_type_check,
    ADD CONSTRAINT processed_commands_type_check
        CHECK (type IN ('top_up', 'bonus', 'spend', 'expire')),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN expired_amount bigint CHECK (expired_amount > 0),
    ADD COLUMN lots_expired jsonb,
    ADD CONSTRAINT processed_commands_expiry_of_credits
        CHECK (expires_at IS NULL OR type IN ('top_up', 'bonus'));

-- A credit that books out more than it brings moves the user's balance down, one that books
-- out exactly as much moves it by nothing: the user leg may be 0 (system legs never are).
ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_amount_check,
    ADD CONSTRAINT ledger_entries_amount_check CHECK (amount <> 0 OR account_kind = 'user'),
    DROP CONSTRAINT ledger_entries_account_kind_check,
    ADD CONSTRAINT ledger_entries_account_kind_check
        CHECK (account_kind IN ('user', 'treasury', 'bonus_pool', 'revenue', 'free_spent',
                                'expired'));
ALTER TABLE system_totals DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired'));
ALTER TABLE system_totals_replay DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired'));

-- The user leg moves by the command's signed amount less what it booked out as expired.
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
            SELECT c.user_id, c.type, c.amount, c.balance_after, c.paid_after, c.expired_amount
              FROM processed_commands c
             WHERE c.transaction_id = n.transaction_id AND c.asset = n.asset
               AND c.status = 'accepted' LIMIT 1) c ON true
     WHERE c.user_id IS NULL
        OR (n.account_kind = 'user' AND (n.user_id <> c.user_id
            OR n.amount <> CASE WHEN c.type IN ('top_up', 'bonus') THEN c.amount ELSE -c.amount END
                           - coalesce(c.expired_amount, 0)
            OR n.balance_after <> c.balance_after
            OR n.paid_after IS DISTINCT FROM c.paid_after))
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
