-- API keys for the HTTP API. Only a SHA-256 of each key's secret is stored; the key itself is
-- shown once, when it is created. A fast hash is enough here (no password stretching): the
-- secrets are 256 random bits, not something a person chose and could be guessed.
CREATE TABLE api_keys (
    key_id       text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    scopes       text[] NOT NULL CHECK (
        cardinality(scopes) >= 1
        AND scopes <@ ARRAY['commands:write', 'wallets:read', 'ops']::text[]),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- One live key per name: `wallet keys revoke NAME` names exactly one.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;
