"""`wallet verify`: audit the ledger and the projection. Each check is one SQL query that
returns the offending rows (at most a few as examples); an empty answer means the check holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import Conn

EXAMPLES_MAX = 5
UNPUBLISHED_GRACE_S = 60
EXPIRED_OPEN_GRACE_S = 300
TRANSFER_IN_FLIGHT_GRACE_S = 300
# Whether a crediting record `c` opened a lot of paid currency (ledger.reversals.opens_paid_lot).
_PAID_LOT = "(c.type = 'top_up' OR (c.type = 'purchase_grant' AND c.consumed_paid = c.amount))"

CHECKS: list[tuple[str, str]] = [
    (
        "every transaction's entries sum to zero",
        """SELECT transaction_id::text AS example FROM ledger_entries
            GROUP BY transaction_id, asset HAVING sum(amount) <> 0""",
    ),
    (
        "every asset's entries sum to zero",
        """SELECT asset || ' sums to ' || sum(amount) AS example FROM ledger_entries
            GROUP BY asset HAVING sum(amount) <> 0""",
    ),
    (
        "no user balance is negative",
        """SELECT user_id || ' ' || asset || ' ' || balance_after AS example FROM ledger_entries
            WHERE account_kind = 'user' AND balance_after < 0""",
    ),
    (
        "account versions have no gaps and balances follow their entries",
        """SELECT user_id || ' ' || asset || ' v' || version AS example FROM (
                SELECT user_id, asset, version, amount, balance_after,
                       lag(version) OVER w AS prev_version,
                       lag(balance_after) OVER w AS prev_balance
                  FROM ledger_entries WHERE account_kind = 'user'
                WINDOW w AS (PARTITION BY user_id, asset ORDER BY version)) s
            WHERE version <> coalesce(prev_version, 0) + 1
               OR balance_after <> coalesce(prev_balance, 0) + amount""",
    ),
    (
        # The legs a record implies (ledger.legs.system_legs): a credit's source; a spend's
        # or capture's paid part to revenue and free part to free_spent (a spend from before
        # lots: all of it to revenue); a hold into holds, a capture or release out of it; a
        # reverse its target's legs backwards; an expire's amount, and what any transaction
        # booked out, to expired; held money given back out of holds; debt paid or left
        # to and from receivable; a transfer into `transfers`, its credit or refund out of it;
        # an item purchase's cost as a spend; a conversion's cost into `exchange`, its grants
        # out of it.
        "every accepted command has one user entry and the system entries its record implies",
        """SELECT c.transaction_id::text AS example FROM processed_commands c
             LEFT JOIN ledger_entries e ON e.transaction_id = c.transaction_id
            WHERE c.status = 'accepted'
            GROUP BY c.transaction_id, c.type, c.amount, c.consumed_paid, c.expired_amount,
                     c.released_amount, c.debt_paid, c.debt_added, c.reversed_type,
                     c.unexpired_amount
           HAVING count(*) FILTER (WHERE e.account_kind = 'user') <> 1
               OR count(*) FILTER (WHERE e.account_kind <> 'user') = 0
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'treasury'), 0)
                  <> CASE WHEN c.type = 'top_up' THEN -c.amount
                          WHEN c.reversed_type = 'top_up' THEN c.amount ELSE 0 END
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'bonus_pool'), 0)
                  <> CASE WHEN c.type = 'bonus' THEN -c.amount
                          WHEN c.reversed_type = 'bonus' THEN c.amount ELSE 0 END
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'revenue'), 0)
                  <> CASE WHEN c.type IN ('spend', 'capture', 'purchase') THEN 1
                          WHEN c.reversed_type IN ('spend', 'capture') THEN -1 ELSE 0 END
                     * coalesce(c.consumed_paid, c.amount)
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'free_spent'), 0)
                  <> CASE WHEN c.type IN ('spend', 'capture', 'purchase') THEN 1
                          WHEN c.reversed_type IN ('spend', 'capture') THEN -1 ELSE 0 END
                     * (c.amount - coalesce(c.consumed_paid, c.amount))
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'expired'), 0)
                  <> CASE c.type WHEN 'expire' THEN c.amount ELSE 0 END
                     + coalesce(c.expired_amount, 0) - coalesce(c.unexpired_amount, 0)
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'holds'), 0)
                  <> CASE c.type WHEN 'hold' THEN c.amount WHEN 'capture' THEN -c.amount
                                 WHEN 'release' THEN -c.amount ELSE 0 END
                     - coalesce(c.released_amount, 0)
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'receivable'), 0)
                  <> coalesce(c.debt_paid, 0) - coalesce(c.debt_added, 0)
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'transfers'), 0)
                  <> CASE WHEN c.type = 'transfer' THEN c.amount
                          WHEN c.type IN ('transfer_in', 'transfer_refund') THEN -c.amount
                          ELSE 0 END
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'exchange'), 0)
                  <> CASE c.type WHEN 'conversion' THEN c.amount
                                 WHEN 'purchase_grant' THEN -c.amount ELSE 0 END""",
    ),
    (
        # Replies and events are rebuilt from the command's record: it must say what the
        # user's entry says (records from before the rebuild have no generation, and no version;
        # records from before lots no paid part).
        "each accepted command records its user entry's balance, paid part, held, debt and version",
        """SELECT c.transaction_id::text AS example FROM processed_commands c
              JOIN ledger_entries e
                ON e.transaction_id = c.transaction_id AND e.account_kind = 'user'
             WHERE c.status = 'accepted' AND c.generation IS NOT NULL
               AND (e.version <> c.version OR e.balance_after <> c.balance_after
                    OR (c.paid_after IS NOT NULL
                        AND e.paid_after IS DISTINCT FROM c.paid_after)
                    OR e.held_after IS DISTINCT FROM c.held_after
                    OR e.debt_after IS DISTINCT FROM c.debt_after)""",
    ),
    (
        "each account's open lots sum to its balance, and their paid part to its paid part",
        """WITH latest AS (
                SELECT DISTINCT ON (user_id, asset) user_id, asset, balance_after, paid_after
                  FROM ledger_entries WHERE account_kind = 'user'
                 ORDER BY user_id, asset, version DESC),
            held AS (
                SELECT user_id, asset, sum(remaining) AS total,
                       coalesce(sum(remaining) FILTER (WHERE paid), 0) AS paid
                  FROM lots GROUP BY user_id, asset)
            SELECT user_id || ' ' || asset || ': balance ' || coalesce(balance_after, 0)
                   || ' (paid ' || coalesce(paid_after, 0) || '), lots '
                   || coalesce(total, 0) || ' (paid ' || coalesce(paid, 0) || ')' AS example
              FROM latest FULL JOIN held USING (user_id, asset)
             WHERE coalesce(balance_after, 0) <> coalesce(total, 0)
                OR coalesce(paid_after, 0) <> coalesce(paid, 0)""",
    ),
    (
        # Every lot opened by a credit since lots exist: what is left of it, in every wallet
        # holding part of it (a transfer hands the very lot on), is what the credit brought
        # (its amount less the debt it paid itself) less what spends, holds, transfers and
        # reversals recorded taking from it (lots_taken; a capture's come from its hold) and
        # what expiry booked out of it (lots_expired) and what paid debt (lots_settled), plus
        # what was given back or handed to it (lots_returned: holds released, reversed spends,
        # transfers received or refunded); and it is of its credit's kind everywhere (a
        # purchase's grant: paid when its record says all of it was).
        "each credit's lot holds what it brought less what was taken, plus what came back",
        f"""WITH moved AS (
                SELECT c.asset, t, -1 AS sign FROM processed_commands c
                 CROSS JOIN jsonb_array_elements(CASE WHEN c.type = 'capture' THEN '[]'
                                                 ELSE coalesce(c.lots_taken, '[]') END
                                                 || coalesce(c.lots_expired, '[]')
                                                 || coalesce(c.lots_settled, '[]')) t
                 WHERE c.lots_taken IS NOT NULL OR c.lots_expired IS NOT NULL
                    OR c.lots_settled IS NOT NULL
                UNION ALL
                SELECT c.asset, t, 1 FROM processed_commands c
                 CROSS JOIN jsonb_array_elements(c.lots_returned) t
                 WHERE c.lots_returned IS NOT NULL),
            taken AS (
                SELECT asset, (t->>0)::uuid AS lot_id, -sum(sign * (t->>1)::bigint) AS n
                  FROM moved GROUP BY 1, 2),
            held AS (
                SELECT asset, lot_id, sum(remaining) AS remaining, bool_and(paid) AS all_paid,
                       bool_or(paid) AS any_paid
                  FROM lots GROUP BY 1, 2)
            SELECT c.transaction_id::text AS example
              FROM processed_commands c
              LEFT JOIN taken t ON t.asset = c.asset AND t.lot_id = c.transaction_id
              LEFT JOIN held l ON l.asset = c.asset AND l.lot_id = c.transaction_id
             WHERE c.type IN ('top_up', 'bonus', 'purchase_grant') AND c.status = 'accepted'
               AND c.paid_after IS NOT NULL
               AND (c.amount - coalesce(c.debt_paid, 0) - coalesce(t.n, 0)
                    + (SELECT coalesce(sum((s->>1)::bigint), 0)  -- debt paid from lots, not it
                         FROM jsonb_array_elements(coalesce(c.lots_settled, '[]')) s)
                    <> coalesce(l.remaining, 0)
                    OR l.all_paid <> {_PAID_LOT} OR l.any_paid <> {_PAID_LOT})""",
    ),
    (
        # (A capture may: its hold took the currency while it was still spendable.)
        "no spend or hold took from a lot whose expiry had come",
        """SELECT s.transaction_id::text AS example
              FROM processed_commands s
             CROSS JOIN jsonb_array_elements(s.lots_taken) t
              JOIN processed_commands c ON c.transaction_id = (t->>0)::uuid
             WHERE s.lots_taken IS NOT NULL
               AND s.type IN ('spend', 'hold', 'purchase', 'conversion')
               AND c.expires_at <= s.processed_at""",
    ),
    (
        "each account's held money is what its open holds keep, and the holds account all of it",
        """WITH latest AS (
                SELECT DISTINCT ON (user_id, asset) user_id, asset, held_after
                  FROM ledger_entries WHERE account_kind = 'user'
                 ORDER BY user_id, asset, version DESC),
            open AS (
                SELECT user_id, asset, sum(amount) AS held FROM holds
                 WHERE status = 'open' GROUP BY user_id, asset)
            SELECT user_id || ' ' || asset || ': held ' || coalesce(held_after, 0)
                   || ', open holds ' || coalesce(held, 0) AS example
              FROM latest FULL JOIN open USING (user_id, asset)
             WHERE coalesce(held_after, 0) <> coalesce(held, 0)
            UNION ALL
            SELECT 'holds account of ' || asset || ' holds ' || sum(amount) AS example
              FROM (SELECT asset, amount FROM ledger_entries WHERE account_kind = 'holds'
                    UNION ALL
                    SELECT asset, -amount FROM holds WHERE status = 'open') h
             GROUP BY asset HAVING sum(amount) <> 0""",
    ),
    (
        # A hold is resolved by a capture or release naming it, or given back by the first
        # transaction of its wallet past its expiry: once (the status is set once; a second
        # capture or release is refused, and would show here).
        "each hold is resolved at most once, as its resolving transaction says",
        """SELECT hold_id AS example FROM processed_commands
             WHERE type IN ('capture', 'release') AND status = 'accepted'
             GROUP BY user_id, asset, hold_id HAVING count(*) > 1
            UNION ALL
            SELECT h.hold_id FROM holds h
              LEFT JOIN processed_commands r
                ON r.transaction_id = h.resolved_by AND r.status = 'accepted'
             WHERE h.status <> 'open'
               AND (r.transaction_id IS NULL
                    OR h.status <> CASE WHEN r.type = 'capture' AND r.hold_id = h.hold_id
                                        THEN 'captured'
                                        WHEN r.type = 'release' AND r.hold_id = h.hold_id
                                        THEN 'released' ELSE 'expired' END)""",
    ),
    (
        "debt comes only from reversals: each wallet owes what reversals left less what "
        "credits paid, and receivable holds minus all of it",
        """WITH latest AS (
                SELECT DISTINCT ON (user_id, asset) user_id, asset, debt_after
                  FROM ledger_entries WHERE account_kind = 'user'
                 ORDER BY user_id, asset, version DESC),
            moved AS (
                SELECT user_id, asset, sum(coalesce(debt_added, 0) - coalesce(debt_paid, 0)) AS n
                  FROM processed_commands WHERE status = 'accepted'
                   AND (debt_added IS NOT NULL OR debt_paid IS NOT NULL)
                 GROUP BY user_id, asset)
            SELECT user_id || ' ' || asset || ': owes ' || coalesce(debt_after, 0) AS example
              FROM latest FULL JOIN moved USING (user_id, asset)
             WHERE coalesce(debt_after, 0) <> coalesce(n, 0)
                OR (debt_after IS NOT NULL AND n IS NULL)
            UNION ALL
            SELECT 'receivable of ' || asset || ' is off by ' || sum(amount) FROM (
                SELECT asset, amount FROM ledger_entries WHERE account_kind = 'receivable'
                UNION ALL
                SELECT asset, debt_after FROM (
                    SELECT DISTINCT ON (user_id, asset) asset, debt_after FROM ledger_entries
                     WHERE account_kind = 'user' ORDER BY user_id, asset, version DESC) d
                 WHERE debt_after IS NOT NULL) r
             GROUP BY asset HAVING sum(amount) <> 0""",
    ),
    (
        # A purchase (ledger.purchases) is one record per asset, all at its command's offset:
        # the main one (the command's key) and parts under reserved keys, each naming the
        # purchase. An item purchase's records are all `purchase`; a conversion is one
        # `conversion` (the main) and its grants, each grant asset's paid part the cost's
        # paid share of it, rounded down.
        "each purchase is whole: its records together, of its kind, its grants' paid share kept",
        """WITH p AS (
                SELECT purchase_id, user_id, topic, partition, generation, source_offset, sku,
                       type, asset, amount, consumed_paid,
                       idempotency_key LIKE 'purchase-part:%' AS part
                  FROM processed_commands WHERE purchase_id IS NOT NULL),
            main AS (SELECT * FROM p WHERE NOT part),
            granted AS (
                SELECT purchase_id, sum(amount) AS amount, sum(consumed_paid) AS paid
                  FROM p WHERE type = 'purchase_grant' GROUP BY purchase_id, asset)
            SELECT x.purchase_id::text AS example FROM p x LEFT JOIN main m USING (purchase_id)
             WHERE m.purchase_id IS NULL
                OR (x.user_id, x.topic, x.partition, x.generation, x.source_offset, x.sku)
                   IS DISTINCT FROM
                   (m.user_id, m.topic, m.partition, m.generation, m.source_offset, m.sku)
                OR (x.type = 'purchase') <> (m.type = 'purchase')
                OR (x.part AND x.type = 'conversion')
            UNION ALL
            SELECT m.purchase_id::text FROM main m LEFT JOIN granted g USING (purchase_id)
             WHERE (m.type = 'conversion') <> (g.purchase_id IS NOT NULL)
                OR g.paid <> floor(g.amount::numeric * m.consumed_paid / m.amount)""",
    ),
    (
        # A transfer (ledger.transfers) is in flight (debited, in `transfers`), completed
        # (credited to its receiver) or refused (refunded to its sender): never two of them,
        # each step once, a credit only of the transfer's amount to its receiver, a refund
        # only after the receiver's side refused.
        "each transfer is in flight, completed or refused, each step once, and `transfers` "
        "holds what is in flight",
        """WITH debit AS (
                SELECT transfer_id, user_id, counterparty, asset, amount FROM processed_commands
                 WHERE type = 'transfer' AND status = 'accepted'),
            step AS (
                SELECT transfer_id,
                       count(*) FILTER (WHERE type = 'transfer_in' AND status = 'accepted')
                           AS credited,
                       count(*) FILTER (WHERE type = 'transfer_in' AND status = 'rejected')
                           AS refused,
                       count(*) FILTER (WHERE type = 'transfer_refund'
                                          AND status = 'accepted') AS refunded,
                       bool_and(CASE type WHEN 'transfer_in' THEN user_id ELSE counterparty END
                                = d_counterparty AND asset = d_asset
                                AND CASE type WHEN 'transfer_in' THEN counterparty
                                              ELSE user_id END = d_user
                                AND (amount = d_amount OR status = 'rejected')) AS matches
                  FROM (SELECT s.*, d.counterparty AS d_counterparty, d.asset AS d_asset,
                               d.amount AS d_amount, d.user_id AS d_user
                          FROM processed_commands s
                          LEFT JOIN debit d USING (transfer_id)
                         WHERE s.type IN ('transfer_in', 'transfer_refund')) s
                 GROUP BY transfer_id)
            SELECT coalesce(d.transfer_id, s.transfer_id)::text AS example
              FROM debit d FULL JOIN step s USING (transfer_id)
             WHERE d.transfer_id IS NULL OR NOT coalesce(s.matches, true)
                OR coalesce(s.credited, 0) + coalesce(s.refused, 0) > 1
                OR coalesce(s.refunded, 0) > coalesce(s.refused, 0)
            UNION ALL
            SELECT 'transfers account of ' || asset || ' is off by ' || sum(amount) FROM (
                SELECT asset, amount FROM ledger_entries WHERE account_kind = 'transfers'
                UNION ALL
                SELECT d.asset, -d.amount FROM processed_commands d
                 WHERE d.type = 'transfer' AND d.status = 'accepted'
                   AND NOT EXISTS (
                        SELECT 1 FROM processed_commands s
                         WHERE s.transfer_id = d.transfer_id AND s.status = 'accepted'
                           AND s.type IN ('transfer_in', 'transfer_refund'))) f
             GROUP BY asset HAVING sum(amount) <> 0""",
    ),
    (
        # Each step follows the one before within milliseconds; one in flight for minutes
        # means a partition stalled (/ready and `wallet status` say which).
        f"no transfer stays in flight more than {TRANSFER_IN_FLIGHT_GRACE_S} s",
        f"""SELECT d.transfer_id::text AS example FROM processed_commands d
             WHERE d.type = 'transfer' AND d.status = 'accepted'
               AND d.processed_at < now() - interval '{TRANSFER_IN_FLIGHT_GRACE_S} seconds'
               AND NOT EXISTS (
                    SELECT 1 FROM processed_commands s
                     WHERE s.transfer_id = d.transfer_id AND s.status = 'accepted'
                       AND s.type IN ('transfer_in', 'transfer_refund'))""",
    ),
    (
        # The expiry sweep's work: a wallet nobody touches is sent an `expire` within seconds.
        f"no lot or hold stays open more than {EXPIRED_OPEN_GRACE_S} s past its expiry",
        f"""SELECT user_id || ' ' || asset || ' lot ' || lot_id AS example FROM lots
             WHERE expires_at < now() - interval '{EXPIRED_OPEN_GRACE_S} seconds'
            UNION ALL
            SELECT user_id || ' ' || asset || ' hold ' || hold_id FROM holds
             WHERE status = 'open'
               AND expires_at < now() - interval '{EXPIRED_OPEN_GRACE_S} seconds'""",
    ),
    (
        "each projected balance, paid part, held and debt equals the ledger's (up to the "
        "checkpoints)",
        """WITH ledger AS (
                SELECT DISTINCT ON (e.user_id, e.asset) e.user_id, e.asset, e.balance_after,
                       coalesce(e.paid_after, 0) AS paid, coalesce(e.held_after, 0) AS held,
                       coalesce(e.debt_after, 0) AS debt
                  FROM ledger_entries e
                  JOIN projection_checkpoints c
                    ON c.projection = 'balances' AND c.partition = e.partition
                 WHERE e.account_kind = 'user' AND e.entry_id <= c.position
                 ORDER BY e.user_id, e.asset, e.version DESC)
            SELECT coalesce(l.user_id, b.user_id) || ' ' || coalesce(l.asset, b.asset)
                   || ': ledger ' || coalesce(l.balance_after::text, 'none')
                   || ', projected ' || coalesce(b.balance::text, 'none') AS example
              FROM ledger l FULL JOIN balances b USING (user_id, asset)
             WHERE l.balance_after IS DISTINCT FROM b.balance OR l.paid IS DISTINCT FROM b.paid
                OR l.held IS DISTINCT FROM b.held OR l.debt IS DISTINCT FROM b.debt""",
    ),
    (
        "each projected system total equals the ledger's (up to the checkpoints)",
        """WITH ledger AS (
                SELECT e.asset, e.account_kind, sum(e.amount) AS total
                  FROM ledger_entries e
                  JOIN projection_checkpoints c
                    ON c.projection = 'balances' AND c.partition = e.partition
                 WHERE e.account_kind <> 'user' AND e.entry_id <= c.position
                 GROUP BY 1, 2)
            SELECT coalesce(l.asset, t.asset) || ' ' || coalesce(l.account_kind, t.account_kind)
                   AS example
              FROM ledger l FULL JOIN system_totals t USING (asset, account_kind)
             WHERE l.total IS DISTINCT FROM t.total""",
    ),
    (
        f"every processed command's reply is published (after {UNPUBLISHED_GRACE_S} s)",
        f"""SELECT topic || '/' || partition || '@' || source_offset AS example
              FROM unpublished_messages
             WHERE created_at < now() - interval '{UNPUBLISHED_GRACE_S} seconds'""",
    ),
]


@dataclass(frozen=True)
class CheckResult:
    name: str
    problems: int
    examples: list[str]

    @property
    def ok(self) -> bool:
        return self.problems == 0


async def verify(conn: Conn) -> list[CheckResult]:
    """Run every check in one repeatable-read snapshot, so they agree with each other."""
    results = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for name, sql in CHECKS:
            rows = await conn.fetch(
                f"SELECT example, count(*) OVER () AS n FROM ({sql}) q LIMIT {EXAMPLES_MAX}"
            )
            problems = rows[0]["n"] if rows else 0
            results.append(CheckResult(name, problems, [r["example"] for r in rows]))
    return results
