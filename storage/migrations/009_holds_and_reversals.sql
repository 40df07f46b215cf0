-- Holds, reversals and debt.
--
-- A hold takes its amount from the wallet's lots (in the asset's spend order) into the
-- `holds` escrow account: it leaves the user account's balance (what is available) and is
-- kept as the user leg's held_after. A capture spends what it holds (all or part, the rest
-- going back to the lots it came from), a release gives it all back, and a hold whose expiry
-- has come is given back by the wallet's next transaction (or the processor's sweep). Each
-- hold is resolved once: `holds` keeps every hold with its status, and the planner refuses a
-- second resolution with a code that says how the first went.
--
-- A reverse undoes one accepted spend, capture, top-up or bonus of the same wallet, once (a
-- unique index says so, whatever the planner believes). A reversed credit takes back what is
-- left of its lot; what had been spent becomes the wallet's debt, booked against the
-- `receivable` system account, and later credits pay it first.

ALTER TABLE processed_commands
    DROP CONSTRAINT processed_commands_type_check,
    ADD CONSTRAINT processed_commands_type_check
        CHECK (type IN ('top_up', 'bonus', 'spend', 'expire', 'hold', 'capture', 'release',
                        'reverse')),
    -- An expire that only gave back lapsed holds booked nothing out: its amount is 0. The
    -- total an expire books out may pass a command's own limit (it is many lots').
    DROP CONSTRAINT processed_commands_amount_check,
    ADD CONSTRAINT processed_commands_amount_check
        CHECK (amount BETWEEN 0 AND 1000000000000000000 AND (amount > 0 OR type = 'expire')),
    DROP CONSTRAINT processed_commands_amount_named,
    ADD CONSTRAINT processed_commands_amount_named
        CHECK (amount IS NOT NULL
               OR (type IN ('expire', 'release', 'reverse', 'capture') AND status = 'rejected')),
    DROP CONSTRAINT processed_commands_consumed_by_spends,
    ADD CONSTRAINT processed_commands_consumed_by_spends
        CHECK (consumed_paid IS NULL
               OR (type IN ('spend', 'capture', 'reverse') AND status = 'accepted')),
    DROP CONSTRAINT processed_commands_expiry_of_credits,
    ADD CONSTRAINT processed_commands_expiry_of_credits
        CHECK (expires_at IS NULL OR type IN ('top_up', 'bonus', 'hold')),
    ADD COLUMN held_after bigint CHECK (held_after > 0),
    ADD COLUMN debt_after bigint CHECK (debt_after > 0),
    ADD COLUMN hold_id text CHECK (hold_id IS NULL OR type IN ('hold', 'capture', 'release')),
    ADD COLUMN released_amount bigint CHECK (released_amount > 0),
    ADD COLUMN debt_paid bigint CHECK (debt_paid > 0),
    ADD COLUMN debt_added bigint CHECK (debt_added > 0),
    ADD COLUMN reverses uuid CHECK ((reverses IS NULL) = (type <> 'reverse')),
    ADD COLUMN reversed_type text
        CHECK (reversed_type IN ('spend', 'capture', 'top_up', 'bonus')),
    ADD COLUMN reason text CHECK ((reason IS NULL) = (type <> 'reverse')),
    -- What it gave back to lots ([[lot id, amount], ...]): a release's or a capture's rest,
    -- lapsed holds, a reversed spend's pieces.
    ADD COLUMN lots_returned jsonb,
    -- A reversed credit: what expiry had booked out of its lot, taken back from `expired`.
    ADD COLUMN unexpired_amount bigint CHECK (unexpired_amount > 0),
    -- Currency given back to a wallet in debt pays the debt first: what it took from lots.
    ADD COLUMN lots_settled jsonb;

-- Once per transaction, enforced by the database too.
CREATE UNIQUE INDEX processed_commands_reversed_once ON processed_commands (reverses)
 WHERE status = 'accepted' AND reverses IS NOT NULL;

ALTER TABLE ledger_entries
    ADD COLUMN held_after bigint,
    ADD COLUMN debt_after bigint,
    ADD CONSTRAINT ledger_entries_held_and_debt_on_user_legs
        CHECK ((held_after IS NULL AND debt_after IS NULL) OR account_kind = 'user'),
    ADD CONSTRAINT ledger_entries_held_positive CHECK (held_after > 0),
    ADD CONSTRAINT ledger_entries_debt_positive CHECK (debt_after > 0),
    DROP CONSTRAINT ledger_entries_account_kind_check,
    ADD CONSTRAINT ledger_entries_account_kind_check
        CHECK (account_kind IN ('user', 'treasury', 'bonus_pool', 'revenue', 'free_spent',
                                'expired', 'holds', 'receivable'));

-- Every hold, open or resolved (a resolved one answers a second resolution); the open ones
-- are loaded with their account.
CREATE TABLE holds (
    user_id        text NOT NULL,
    asset          text NOT NULL,
    hold_id        text NOT NULL,
    partition      integer NOT NULL CHECK (partition >= 0),
    transaction_id uuid NOT NULL,  -- the hold's own
    amount         bigint NOT NULL CHECK (amount BETWEEN 1 AND 1000000000000000),
    pieces         jsonb NOT NULL,  -- [[lot id, paid, amount, seq, expires ms], ...]
    expires_at     timestamptz NOT NULL,
    status         text NOT NULL CHECK (status IN ('open', 'captured', 'released', 'expired')),
    resolved_by    uuid CHECK ((resolved_by IS NULL) = (status = 'open')),
    captured       bigint CHECK (captured BETWEEN 1 AND amount),
    CHECK ((captured IS NOT NULL) = (status = 'captured')),
    PRIMARY KEY (user_id, asset, hold_id)
);
CREATE INDEX holds_open ON holds (user_id, asset) WHERE status = 'open';
CREATE INDEX holds_due ON holds (partition, expires_at) WHERE status = 'open';

ALTER TABLE balances ADD COLUMN held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
                     ADD COLUMN debt bigint NOT NULL DEFAULT 0 CHECK (debt >= 0);
ALTER TABLE balances_replay ADD COLUMN held bigint NOT NULL DEFAULT 0,
                            ADD COLUMN debt bigint NOT NULL DEFAULT 0;
ALTER TABLE system_totals DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired',
                                'holds', 'receivable'));
ALTER TABLE system_totals_replay DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired',
                                'holds', 'receivable'));

-- The user leg moves by what the record implies: a credit by its amount; a spend, expire or
-- hold by minus its amount; a capture by nothing of its own; a release by the hold's amount;
-- a reverse by the amount given back (a spend or capture) or minus what was left of the
-- credit's lot (its amount less the debt it left and what expiry had booked out). Then less
-- what it booked out as expired, plus what lapsed holds (or a capture's rest) gave back, less
-- what paid debt.
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
                   WHEN c.type IN ('top_up', 'bonus') THEN c.amount
                   WHEN c.type IN ('spend', 'expire', 'hold') THEN -c.amount
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
