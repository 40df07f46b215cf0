-- Purchases and conversions (see ledger/purchases.py): a purchase is written as one record
-- per asset it moves, all at its command's offset and in one transaction, each its own
-- balanced transaction as every record is. `purchase` is an item purchase's cost (consumed
-- like a spend), `conversion` a conversion's cost (into the asset's new `exchange` account),
-- `purchase_grant` a conversion's grant (out of `exchange`, opening a lot: paid when its
-- record says all of it was, consumed_paid = amount). Every record of a purchase names what
-- was bought (`sku`) and, accepted, the purchase (`purchase_id`: its main record's
-- transaction id). The main record has the command's key; the others a reserved key naming
-- the purchase and the asset, so each part is recorded once whatever is retried.

ALTER TABLE processed_commands
    DROP CONSTRAINT processed_commands_type_check,
    ADD CONSTRAINT processed_commands_type_check
        CHECK (type IN ('top_up', 'bonus', 'spend', 'expire', 'hold', 'capture', 'release',
                        'reverse', 'transfer', 'transfer_in', 'transfer_refund', 'purchase',
                        'conversion', 'purchase_grant')),
    DROP CONSTRAINT processed_commands_consumed_by_spends,
    ADD CONSTRAINT processed_commands_consumed_by_spends
        CHECK (consumed_paid IS NULL
               OR (type IN ('spend', 'capture', 'reverse', 'transfer', 'transfer_in',
                            'transfer_refund', 'purchase', 'conversion', 'purchase_grant')
                   AND status = 'accepted')),
    ADD COLUMN purchase_id uuid,
    ADD COLUMN sku text,
    ADD CONSTRAINT processed_commands_sku_of_purchases
        CHECK ((sku IS NULL) = (type NOT IN ('purchase', 'conversion', 'purchase_grant'))),
    ADD CONSTRAINT processed_commands_purchase_of_purchases
        CHECK (CASE WHEN sku IS NULL OR status = 'rejected' THEN purchase_id IS NULL
                    WHEN idempotency_key LIKE 'purchase-part:%'
                        THEN purchase_id IS NOT NULL AND purchase_id <> transaction_id
                    ELSE purchase_id = transaction_id END),
    ADD CONSTRAINT processed_commands_purchase_parts
        CHECK (status = 'rejected' OR CASE WHEN type = 'purchase_grant'
                   THEN consumed_paid IN (0, amount)
                        AND idempotency_key LIKE 'purchase-part:%'
               WHEN type IN ('purchase', 'conversion') THEN consumed_paid IS NOT NULL
               ELSE true END);

-- A purchase's records, found from its id (GET /wallet/purchases/{id}, `wallet verify`).
CREATE INDEX processed_commands_purchase ON processed_commands (purchase_id)
 WHERE purchase_id IS NOT NULL;
-- The purchases of the last hour, one row each (its main record), for `wallet status`.
CREATE INDEX processed_commands_purchases ON processed_commands (processed_at)
 WHERE sku IS NOT NULL AND idempotency_key NOT LIKE 'purchase-part:%';

ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_account_kind_check,
    ADD CONSTRAINT ledger_entries_account_kind_check
        CHECK (account_kind IN ('user', 'treasury', 'bonus_pool', 'revenue', 'free_spent',
                                'expired', 'holds', 'receivable', 'transfers', 'exchange'));
ALTER TABLE system_totals DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired',
                                'holds', 'receivable', 'transfers', 'exchange'));
ALTER TABLE system_totals_replay DROP CONSTRAINT system_totals_account_kind_check,
    ADD CONSTRAINT system_totals_account_kind_check
        CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue', 'free_spent', 'expired',
                                'holds', 'receivable', 'transfers', 'exchange'));

-- The batch check learns the user legs of the three: a cost moves the buyer's balance by
-- minus its amount, a grant by plus its amount (then, as for every type, less what expired,
-- plus what was released, less what paid debt).
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
                   WHEN c.type IN ('top_up', 'bonus', 'transfer_in', 'transfer_refund',
                                   'purchase_grant')
                       THEN c.amount
                   WHEN c.type IN ('spend', 'expire', 'hold', 'transfer', 'purchase', 'conversion')
                       THEN -c.amount
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
