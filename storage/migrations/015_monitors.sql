-- Monitors (`wallet monitors`): operators' rules over every wallet of an asset. The writer
-- evaluates them on each accepted transaction (ledger/monitors.py) and keeps the alerts a
-- transaction raised on its record (`alerts`), in the batch's transaction; the relay
-- publishes them to the alerts topic with the record's reply and event.
CREATE TABLE monitors (
    monitor_id  text PRIMARY KEY CHECK (monitor_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    kind        text NOT NULL
        CHECK (kind IN ('balance_above', 'balance_below', 'spend_over_window')),
    asset       text NOT NULL REFERENCES assets (code),
    threshold   bigint NOT NULL CHECK (threshold BETWEEN 0 AND 1000000000000000000),
    window_s    int CHECK (window_s BETWEEN 60 AND 86400),
    created_by  text NOT NULL CHECK (length(created_by) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((window_s IS NULL) = (kind <> 'spend_over_window'))
);

-- JSON [[monitor id, kind, threshold, value, window s], ...]: only an accepted transaction
-- raises alerts.
ALTER TABLE processed_commands
    ADD COLUMN alerts jsonb,
    ADD CONSTRAINT processed_commands_alerts_accepted
        CHECK (alerts IS NULL OR (status = 'accepted' AND jsonb_typeof(alerts) = 'array'));

-- The alerts of the last hour, for `wallet status`.
CREATE INDEX processed_commands_alerts ON processed_commands (processed_at)
 WHERE alerts IS NOT NULL;

-- An alert's message (only planned rows have one today, rebuilt from their records; the
-- column keeps the outbox's rows and the plan's alike, as 012's reply_key).
ALTER TABLE outbox ADD COLUMN alert_value bytea;
