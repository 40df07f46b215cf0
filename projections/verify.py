"""`wallet verify`: audit the ledger and the projection. Each check is one SQL query that
returns the offending rows (at most a few as examples); an empty answer means the check holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import Conn

EXAMPLES_MAX = 5
UNPUBLISHED_GRACE_S = 60
EXPIRED_OPEN_GRACE_S = 300

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
        # The legs a record implies (ledger.decide.system_legs): a credit's source; a spend's
        # paid part to revenue and free part to free_spent (a spend from before lots: all of
        # it to revenue); an expire's amount, and what any transaction booked out, to expired.
        "every accepted command has one user entry and the system entries its record implies",
        """SELECT c.transaction_id::text AS example FROM processed_commands c
             LEFT JOIN ledger_entries e ON e.transaction_id = c.transaction_id
            WHERE c.status = 'accepted'
            GROUP BY c.transaction_id, c.type, c.amount, c.consumed_paid, c.expired_amount
           HAVING count(*) FILTER (WHERE e.account_kind = 'user') <> 1
               OR count(*) FILTER (WHERE e.account_kind <> 'user') = 0
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'treasury'), 0)
                  <> CASE c.type WHEN 'top_up' THEN -c.amount ELSE 0 END
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'bonus_pool'), 0)
                  <> CASE c.type WHEN 'bonus' THEN -c.amount ELSE 0 END
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'revenue'), 0)
                  <> CASE c.type WHEN 'spend' THEN coalesce(c.consumed_paid, c.amount) ELSE 0 END
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'free_spent'), 0)
                  <> CASE c.type WHEN 'spend' THEN c.amount - coalesce(c.consumed_paid, c.amount)
                     ELSE 0 END
               OR coalesce(sum(e.amount) FILTER (WHERE e.account_kind = 'expired'), 0)
                  <> CASE c.type WHEN 'expire' THEN c.amount ELSE 0 END
                     + coalesce(c.expired_amount, 0)""",
    ),
    (
        # Replies and events are rebuilt from the command's record: it must say what the
        # user's entry says (records from before the rebuild have no generation, and no version;
        # records from before lots no paid part).
        "each accepted command records its user entry's balance, paid part and version",
        """SELECT c.transaction_id::text AS example FROM processed_commands c
              JOIN ledger_entries e
                ON e.transaction_id = c.transaction_id AND e.account_kind = 'user'
             WHERE c.status = 'accepted' AND c.generation IS NOT NULL
               AND (e.version <> c.version OR e.balance_after <> c.balance_after
                    OR (c.paid_after IS NOT NULL
                        AND e.paid_after IS DISTINCT FROM c.paid_after))""",
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
        # Every lot opened by a credit since lots exist: what is left of it is its amount less
        # what spends recorded taking from it (lots_taken) and what expiry booked out of it
        # (lots_expired), and of its credit's kind.
        "each credit's lot holds its amount less what spends took from it and expiry booked out",
        """WITH taken AS (
                SELECT c.user_id, c.asset, (t->>0)::uuid AS lot_id, sum((t->>1)::bigint) AS n
                  FROM processed_commands c
                 CROSS JOIN jsonb_array_elements(coalesce(c.lots_taken, '[]')
                                                 || coalesce(c.lots_expired, '[]')) t
                 WHERE c.lots_taken IS NOT NULL OR c.lots_expired IS NOT NULL
                 GROUP BY 1, 2, 3)
            SELECT c.transaction_id::text AS example
              FROM processed_commands c
              LEFT JOIN taken t
                ON t.user_id = c.user_id AND t.asset = c.asset AND t.lot_id = c.transaction_id
              LEFT JOIN lots l
                ON l.user_id = c.user_id AND l.asset = c.asset AND l.lot_id = c.transaction_id
             WHERE c.type IN ('top_up', 'bonus') AND c.status = 'accepted'
               AND c.paid_after IS NOT NULL
               AND (c.amount - coalesce(t.n, 0) <> coalesce(l.remaining, 0)
                    OR l.paid <> (c.type = 'top_up'))""",
    ),
    (
        "no spend took from a lot whose expiry had come",
        """SELECT s.transaction_id::text AS example
              FROM processed_commands s
             CROSS JOIN jsonb_array_elements(s.lots_taken) t
              JOIN processed_commands c ON c.transaction_id = (t->>0)::uuid
             WHERE s.lots_taken IS NOT NULL AND c.expires_at <= s.processed_at""",
    ),
    (
        # The expiry sweep's work: a wallet nobody touches is sent an `expire` within seconds.
        f"no lot stays open more than {EXPIRED_OPEN_GRACE_S} s past its expiry",
        f"""SELECT user_id || ' ' || asset || ' ' || lot_id AS example FROM lots
             WHERE expires_at < now() - interval '{EXPIRED_OPEN_GRACE_S} seconds'""",
    ),
    (
        "each projected balance and paid part equals the ledger's (up to the checkpoints)",
        """WITH ledger AS (
                SELECT DISTINCT ON (e.user_id, e.asset) e.user_id, e.asset, e.balance_after,
                       coalesce(e.paid_after, 0) AS paid
                  FROM ledger_entries e
                  JOIN projection_checkpoints c
                    ON c.projection = 'balances' AND c.partition = e.partition
                 WHERE e.account_kind = 'user' AND e.entry_id <= c.position
                 ORDER BY e.user_id, e.asset, e.version DESC)
            SELECT coalesce(l.user_id, b.user_id) || ' ' || coalesce(l.asset, b.asset)
                   || ': ledger ' || coalesce(l.balance_after::text, 'none')
                   || ', projected ' || coalesce(b.balance::text, 'none') AS example
              FROM ledger l FULL JOIN balances b USING (user_id, asset)
             WHERE l.balance_after IS DISTINCT FROM b.balance OR l.paid IS DISTINCT FROM b.paid""",
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
