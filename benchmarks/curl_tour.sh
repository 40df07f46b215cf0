#!/usr/bin/env bash
# The README's HTTP walkthrough: top up, spend, overspend, retry with the same key, read.
# Run against `make up` (API on 127.0.0.1:8080), with its development key unless WALLET_API_KEY.
set -u
cd "$(dirname "$0")/.."
API=${API:-http://127.0.0.1:8080}
AUTH="Authorization: Bearer ${WALLET_API_KEY:-$(cat .wallet/dev-api-key)}"
post() { curl -s -w '  -> HTTP %{http_code}\n' -X POST "$API/wallet/$1" -H "$AUTH" -H 'Content-Type: application/json' -d "$2"; }
echo '$ top up 100 GOLD';  post topup '{"userId":"alice","assetId":"GOLD","amount":100,"idempotencyKey":"tour-1"}'
echo '$ spend 30 GOLD';    post spend '{"userId":"alice","assetId":"GOLD","amount":30,"idempotencyKey":"tour-2","description":"sword"}'
echo '$ spend 500 GOLD';   post spend '{"userId":"alice","assetId":"GOLD","amount":500,"idempotencyKey":"tour-3"}'
echo '$ retry tour-1';     post topup '{"userId":"alice","assetId":"GOLD","amount":100,"idempotencyKey":"tour-1"}'
echo '$ reuse tour-1 for 5'; post topup '{"userId":"alice","assetId":"GOLD","amount":5,"idempotencyKey":"tour-1"}'
echo '$ amount 1.5';       post topup '{"userId":"alice","assetId":"GOLD","amount":1.5,"idempotencyKey":"tour-4"}'
sleep 0.5  # the projection is eventually consistent
echo '$ balance';          curl -s -H "$AUTH" "$API/wallet/alice/balance"; echo
echo '$ history';          curl -s -H "$AUTH" "$API/wallet/alice/transactions?limit=2"; echo
echo '$ no key';           curl -s -w '  -> HTTP %{http_code}\n' "$API/wallet/alice/balance"
