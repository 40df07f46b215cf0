#!/bin/sh
# Run once by the postgres image when its volume is new (/docker-entrypoint-initdb.d):
# the login role the wallet's services use. It owns nothing; `wallet grant` (in the migrate
# job) gives it what the service needs, and the ledger tables stay insert-only for it.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v password="$SERVICE_ROLE_PASSWORD" <<'SQL'
CREATE ROLE wallet_service LOGIN PASSWORD :'password';
SQL
