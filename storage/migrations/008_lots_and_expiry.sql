-- Lots: paid and free currency accounted apart, and expiry.
--
-- Every accepted credit opens a lot named by its transaction id (a top-up a paid one, a bonus
-- a free one); a spend takes from the open lots in its asset's spend order, and its paid part
-- goes to `revenue`, its free part to `free_spent`. `lots` holds the open lots only (a lot
-- used up is deleted): it is the state the single writer of a partition loads for an account
-- it has not cached, and `wallet verify` checks it against the ledger (per account, the lots
-- sum to the balance and their paid part to the paid balance).
--
-- Expiry: a credit may carry `expires_at`; its lot stops being spendable then and is booked
-- out to the `expired` system account, once, by the first transaction of the account decided
-- at or after that time (a command's own, or an `expire` the processor's sweep sends for a
-- wallet nobody touches). Decisions use the processor's clock, recorded as processed_at.

ALTER TABLE assets ADD COLUMN spend_order text NOT NULL DEFAULT 'free_first'
    CHECK (spend_order IN ('free_first', 'paid_first', 'expiring_first'));

-- The record of each command (which replies and events are rebuilt from) says how much of
-- the balance was paid for, and for a spend how much paid currency it took, and from which
-- lots ([[lot id, amount], ...]: what a reversal gives back to).
-- An `expire` names no amount: a refused one records none, an accepted one what it booked out.
ALTER TABLE processed_commands
    ADD COLUMN paid_after bigint CHECK (paid_after BETWEEN 0 AND balance_after),
    ADD COLUMN consumed_paid bigint CHECK (consumed_paid BETWEEN 0 AND amount),
    ADD COLUMN lots_taken jsonb,
    ADD CONSTRAINT processed_commands_consumed_by_spends
        CHECK (consumed_paid IS NULL OR (type = 'spend' AND status = 'accepted')),
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
    ADD COLUMN paid_after bigint,
    ADD CONSTRAINT ledger_entries_paid_on_user_legs
        CHECK (paid_after IS NULL OR (account_kind = 'user' AND paid_after BETWEEN 0 AND balance_after)),
    DROP CONSTRAINT ledger_entries_amount_check,
    ADD CONSTRAINT ledger_entries_amount_check CHECK (amount <> 0 OR account_kind = 'user'),
    DROP CONSTRAINT ledger_entries_account_kind_check,
    ADD CONSTRAINT ledger_entries_account_kind_check
        CHECK (account_kind IN ('user', 'treasury', 'bonus_pool', 'revenue', 'free_spent',
                                'expired'));

CREATE TABLE lots (
    user_id    text NOT NULL,
    asset      text NOT NULL,
    lot_id     uuid NOT NULL,          -- the crediting transaction (a legacy lot: see below)
    partition  integer NOT NULL CHECK (partition >= 0),
    paid       boolean NOT NULL,
    remaining  bigint NOT NULL CHECK (remaining BETWEEN 1 AND 1000000000000000000),
    seq        bigint NOT NULL CHECK (seq >= 0),  -- the account version that opened it
    expires_at timestamptz,
    PRIMARY KEY (user_id, asset, lot_id)
) WITH (fillfactor = 80);  -- room on each page: a spend's `remaining` rewrite is heap-only
-- The expiry sweep's question: which wallets of a partition hold a lot whose time has come.
CREATE INDEX lots_due ON lots (partition, expires_at) WHERE expires_at IS NOT NULL;

-- Balances from before lots: each account's balance becomes at most two legacy lots, its free
-- and its paid part, as the free_first order would have left them: spends took free
-- currency first. The free part is a running sum of bonuses less spends floored at zero
-- (Lindley's recursion: W_n = S_n - min(0, min_k S_k)). The latest user leg of each account
-- is given its paid_after (a schema change, not an entry: the append-only guard is lifted
-- for this statement only), so that loads, projections and replays see the split.
CREATE TEMPORARY TABLE legacy_split ON COMMIT DROP AS
WITH steps AS (
    SELECT e.entry_id, e.user_id, e.asset, e.partition, e.version, e.balance_after,
           sum(CASE c.type WHEN 'top_up' THEN 0 ELSE e.amount END)
               OVER (PARTITION BY e.user_id, e.asset ORDER BY e.version) AS s
      FROM ledger_entries e JOIN processed_commands c USING (transaction_id)
     WHERE e.account_kind = 'user'),
floored AS (
    SELECT *, s - least(0, min(s) OVER (PARTITION BY user_id, asset ORDER BY version)) AS free,
           row_number() OVER (PARTITION BY user_id, asset ORDER BY version DESC) AS newest
      FROM steps)
SELECT entry_id, user_id, asset, partition, balance_after,
       least(free, balance_after) AS free, balance_after - least(free, balance_after) AS paid
  FROM floored WHERE newest = 1;

INSERT INTO lots (user_id, asset, lot_id, partition, paid, remaining, seq)
SELECT s.user_id, s.asset,
       md5('legacy-lot/' || v.is_paid::text || '/' || s.user_id || '/' || s.asset)::uuid,
       s.partition, v.is_paid, v.amount, 0
  FROM legacy_split s
 CROSS JOIN LATERAL (VALUES (false, s.free), (true, s.paid)) AS v(is_paid, amount)
 WHERE v.amount > 0;

ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only;
UPDATE ledger_entries e SET paid_after = l.paid FROM legacy_split l WHERE e.entry_id = l.entry_id;
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_append_only;

-- The read side keeps the paid part beside each balance.
ALTER TABLE balances ADD COLUMN paid bigint NOT NULL DEFAULT 0 CHECK (paid BETWEEN 0 AND balance);
ALTER TABLE balances_replay ADD COLUMN paid bigint NOT NULL DEFAULT 0;
UPDATE balances b SET paid = l.paid FROM legacy_split l
 WHERE b.user_id = l.user_id AND b.asset = l.asset AND b.balance = l.balance_after;
ALTER TABLE system_totals DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired'));
ALTER TABLE system_totals_replay DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired'));

-- Transactions may have more than two legs (a spend of paid and free currency has three, an
-- expiry booked out adds one): between 2 and 8, exactly one of them the user's, summing to
-- zero. The user leg carries the command's paid_after and moves by its signed amount less
-- what it booked out as expired.
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
