-- The read side: projected balances and system account totals, each with the projector's
-- per-partition checkpoint (the last ledger entry id applied), written in one transaction.
-- The *_replay tables are where `wallet replay --from-scratch` rebuilds before swapping in.

CREATE TABLE balances (
    user_id     text NOT NULL,
    asset       text NOT NULL,
    balance     bigint NOT NULL CHECK (balance >= 0),
    version     bigint NOT NULL CHECK (version >= 1),
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, asset)
);

CREATE TABLE system_totals (
    asset         text NOT NULL,
    account_kind  text NOT NULL CHECK (account_kind IN ('treasury', 'bonus_pool', 'revenue')),
    total         bigint NOT NULL,
    PRIMARY KEY (asset, account_kind)
);

CREATE TABLE balances_replay (LIKE balances INCLUDING ALL);
CREATE TABLE system_totals_replay (LIKE system_totals INCLUDING ALL);

CREATE TABLE projection_checkpoints (
    projection  text NOT NULL,
    partition   integer NOT NULL,
    position    bigint NOT NULL CHECK (position >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, partition)
);
