-- Daily caps per user and asset (`wallet limits`, e.g. for minors): the most a wallet may
-- spend (spends and captures) and give away by transfer in a UTC day. The partition's writer
-- reads a batch's capped wallets with what they used today, and refuses a command past its
-- cap (daily_limit_exceeded) in the batch's transaction (ledger/caps.py). NULL: no cap. A row
-- with no cap left is deleted.
CREATE TABLE account_limits (
    user_id                 text NOT NULL,
    asset                   text NOT NULL REFERENCES assets (code),
    daily_spend_max         bigint CHECK (daily_spend_max BETWEEN 0 AND 1000000000000000000),
    daily_transfer_out_max  bigint
        CHECK (daily_transfer_out_max BETWEEN 0 AND 1000000000000000000),
    set_by                  text NOT NULL CHECK (length(set_by) BETWEEN 1 AND 200),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, asset),
    CHECK (daily_spend_max IS NOT NULL OR daily_transfer_out_max IS NOT NULL)
);
