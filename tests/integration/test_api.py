"""The HTTP API over real HTTP: every endpoint, and every kind of bad input answered with a 4xx."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from foundation.settings import Settings
from processor.caps import CapsLookup
from tests.integration.helpers import (
    eventually,
    fetch,
    running_processor,
    running_projector,
    wait_projected,
)
from wallet.api import serve
from wallet.apikeys import SCOPES, create_key, revoke_key
from wallet.devstack import free_port


@pytest.fixture
async def api_url(stack: Settings) -> AsyncIterator[str]:
    """Processor, projector and a uvicorn server on a free port (keys checked on every
    request, no cache, so a revocation shows at once)."""
    async with running_projector(stack), _serving(stack) as base:
        yield base


@contextlib.asynccontextmanager
async def _serving(stack: Settings, **changes: Any) -> AsyncIterator[str]:
    """A processor and a uvicorn server on a free port, with these settings changed."""
    settings = stack.model_copy(
        update={"api_port": free_port(), "api_key_cache_ttl_ms": 0, **changes}
    )
    stop = asyncio.Event()
    async with running_processor(settings):
        server = asyncio.create_task(serve(settings, stop))
        base = f"http://127.0.0.1:{settings.api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await _wait_up(client)
        try:
            yield base
        finally:
            stop.set()
            await asyncio.wait_for(server, 30)


@pytest.fixture
async def api(api_url: str, stack: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client holding a key with every scope."""
    key = await new_key(stack, "every-scope", list(SCOPES))
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=_bearer(key)) as client:
        yield client


async def new_key(settings: Settings, name: str, scopes: list[str]) -> str:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        return await create_key(conn, name, scopes)
    finally:
        await conn.close()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _wait_up(client: httpx.AsyncClient) -> None:
    for _ in range(200):
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/health")).status_code == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("API did not start")


def _body(**changes: Any) -> dict[str, Any]:
    body = {"userId": "ana", "assetId": "GOLD", "amount": 10, "idempotencyKey": uuid.uuid4().hex}
    body.update(changes)
    return body


class TestWrites:
    async def test_top_up_bonus_spend_and_their_status_codes(self, api: httpx.AsyncClient) -> None:
        """201 accepted, 200 duplicate, 402 overdraft, 409 key reuse, 422 unknown asset."""
        top_up = await api.post("/wallet/topup", json=_body(amount=100, idempotencyKey="t1"))
        assert top_up.status_code == 201
        assert top_up.json() | {"transactionId": None} == {
            "status": "accepted", "duplicate": False, "transactionId": None, "userId": "ana",
            "assetId": "GOLD", "amount": 100, "balance": 100, "paid": 100, "free": 0,
            "held": 0, "available": 100, "debt": 0, "holdId": None, "consumed": None,
            "expired": None, "released": None, "error": None, "position": "GOLD:1",
            "transfer": None, "purchase": None,
        }  # fmt: skip
        again = await api.post("/wallet/topup", json=_body(amount=100, idempotencyKey="t1"))
        assert again.status_code == 200 and again.json()["duplicate"]
        assert again.json()["transactionId"] == top_up.json()["transactionId"]
        assert again.json()["position"] == "GOLD:1"  # a repeat answers the original's
        bonus = (await api.post("/wallet/bonus", json=_body(amount=5))).json()
        assert (bonus["balance"], bonus["paid"], bonus["free"]) == (105, 100, 5)
        spend = (await api.post("/wallet/spend", json=_body(amount=7))).json()
        assert spend["consumed"] == {"paid": 2, "free": 5} and spend["balance"] == 98
        over = await api.post("/wallet/spend", json=_body(amount=1000))
        assert over.status_code == 402 and over.json()["error"]["code"] == "insufficient_funds"
        assert over.json()["position"] is None  # nothing written
        reused = await api.post("/wallet/topup", json=_body(amount=1, idempotencyKey="t1"))
        assert reused.status_code == 409
        soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        expiring = await api.post("/wallet/bonus", json=_body(amount=3, expiresAt=soon))
        assert expiring.status_code == 201 and expiring.json()["free"] == 3
        far = (datetime.now(UTC) + timedelta(days=4000)).isoformat()
        assert (await api.post("/wallet/bonus", json=_body(expiresAt=far))).status_code == 422
        assert (await api.post("/wallet/spend", json=_body(expiresAt=soon))).status_code == 422
        unknown = await api.post("/wallet/topup", json=_body(assetId="RUBY"))
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_asset"


class TestHoldsAndReversals:
    async def test_hold_capture_release_and_reverse_routes(
        self, api: httpx.AsyncClient, stack: Settings
    ) -> None:
        """A hold (201, held and available), a partial capture, a second capture (409), a
        release of an unknown hold (404), a reverse of the capture (201) and of it again
        (409); the balance read shows held money in the total until it is resolved."""
        await api.post("/wallet/topup", json=_body(userId="hana", amount=40))
        held = await api.post("/wallet/hold", json=_body(userId="hana", amount=25,
                                                         holdId="bid", expiresInS=60))  # fmt: skip
        assert held.status_code == 201
        assert (held.json()["balance"], held.json()["held"], held.json()["available"]) == (
            40, 25, 15)  # fmt: skip
        read = (await api.get("/wallet/hana/balance", params={"consistent": "true"})).json()
        assert read["balances"] == {"GOLD": 40} and read["breakdown"]["GOLD"]["held"] == 25
        body = _body(userId="hana", holdId="bid", amount=10)
        won = await api.post("/wallet/capture", json=body)
        assert won.status_code == 201 and won.json()["released"] == 15
        again = await api.post("/wallet/capture", json=body | {"idempotencyKey": "c2"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "hold_already_captured"
        release = {"userId": "hana", "assetId": "GOLD", "holdId": "nope", "idempotencyKey": "r1"}
        with_amount = await api.post("/wallet/release", json=release | {"amount": 1})
        assert with_amount.status_code == 422  # a release takes no amount
        unknown = await api.post("/wallet/release", json=release)
        assert unknown.status_code == 404
        target = won.json()["transactionId"]
        undo = {"userId": "hana", "assetId": "GOLD", "idempotencyKey": "u1",
                "transactionId": target, "reason": "auction voided"}  # fmt: skip
        reversed_ = await api.post("/wallet/reverse", json=undo)
        assert reversed_.status_code == 201 and reversed_.json()["balance"] == 40
        twice = await api.post("/wallet/reverse", json=undo | {"idempotencyKey": "u2"})
        assert twice.status_code == 409


class TestTransfers:
    async def test_a_gift_a_refusal_and_the_transfer_reads(self, api: httpx.AsyncClient) -> None:
        """201 completed; 404 refused by a receiver without a wallet (the amount back); 402
        a sender without enough; 422 a gift to oneself; 200 a retry (pending: its debit);
        GET /wallet/transfers/{id} tells each one's state and steps, 404 an unknown id."""
        await api.post("/wallet/topup", json=_body(userId="gia", amount=100))
        await api.post("/wallet/topup", json=_body(userId="ben", amount=1))
        gift = _body(userId="gia", toUserId="ben", amount=30, idempotencyKey="g1")
        given = await api.post("/wallet/transfer", json=gift)
        assert given.status_code == 201, given.text
        transfer = given.json()["transfer"]
        assert (transfer["fromUserId"], transfer["toUserId"], transfer["status"]) == (
            "gia", "ben", "completed")  # fmt: skip
        assert given.json()["transactionId"] == transfer["id"]
        again = await api.post("/wallet/transfer", json=gift)
        assert again.status_code == 200 and again.json()["transfer"]["status"] == "pending"
        lost = await api.post("/wallet/transfer", json=gift | {"toUserId": "nobody",
                                                               "idempotencyKey": "g2"})  # fmt: skip
        assert lost.status_code == 404 and lost.json()["error"]["code"] == "unknown_wallet"
        assert lost.json()["balance"] == 70 and lost.json()["transfer"]["status"] == "refused"
        over = await api.post("/wallet/transfer", json=gift | {"amount": 500,
                                                               "idempotencyKey": "g3"})  # fmt: skip
        assert over.status_code == 402
        to_self = await api.post("/wallet/transfer", json=gift | {"toUserId": "gia"})
        assert to_self.status_code == 422
        [credit, _] = (await api.get("/wallet/ben/transactions")).json()["items"]
        assert (credit["type"], credit["counterparty"], credit["transferId"]) == (
            "transfer_in", "gia", transfer["id"])  # fmt: skip
        read = (await api.get(f"/wallet/transfers/{transfer['id']}")).json()
        assert (read["status"], read["amount"], len(read["steps"])) == ("completed", 30, 2)
        refused = (await api.get(f"/wallet/transfers/{lost.json()['transfer']['id']}")).json()
        assert refused["status"] == "refused" and refused["refusal"]["code"] == "unknown_wallet"
        assert [s["type"] for s in refused["steps"]] == [
            "transfer", "transfer_in", "transfer_refund"]  # fmt: skip
        assert (await api.get(f"/wallet/transfers/{uuid.uuid4()}")).status_code == 404


class TestLimits:
    async def test_ops_set_and_read_daily_caps(self, api: httpx.AsyncClient) -> None:
        """PUT /ops/limits sets a wallet's caps (GET reads them back); a spend past the cap is
        402 daily_limit_exceeded; both caps null removes them; an unknown asset is 422."""
        await api.post("/wallet/topup", json=_body(userId="teo", amount=100))
        put = await api.put("/ops/limits/teo/GOLD", json={"dailySpendMax": 10})
        assert put.status_code == 200, put.text
        # The first cap of a deployment: the processor looks for one once a second.
        await asyncio.sleep(CapsLookup.RECHECK_AFTER_S + 0.5)
        [row] = (await api.get("/ops/limits/teo")).json()["limits"]
        caps = (row["dailySpendMax"], row["dailyTransferOutMax"], row["setBy"])
        assert caps == (10, None, "api")
        spend = await api.post("/wallet/spend", json=_body(userId="teo", amount=11))
        assert spend.status_code == 402, spend.text
        assert spend.json()["error"]["code"] == "daily_limit_exceeded"
        cleared = await api.put("/ops/limits/teo/GOLD", json={})
        assert cleared.json()["limits"] == []
        assert (await api.put("/ops/limits/teo/RUBY", json={"dailySpendMax": 1})).status_code == 422


class TestMonitors:
    async def test_ops_add_list_and_remove_monitors(self, api: httpx.AsyncClient) -> None:
        """PUT /ops/monitors/{id} adds or replaces a monitor (GET lists them), DELETE removes
        it (404 a second time); a window on a balance monitor or an unknown asset is 422."""
        body = {"kind": "spend_over_window", "assetId": "GOLD", "threshold": 500,
                "windowS": 3600}  # fmt: skip
        put = await api.put("/ops/monitors/big-spender", json=body)
        assert put.status_code == 200, put.text
        [row] = (await api.get("/ops/monitors")).json()["monitors"]
        assert (row["monitorId"], row["kind"], row["windowS"], row["createdBy"]) == (
            "big-spender", "spend_over_window", 3600, "api")  # fmt: skip
        wrong = body | {"kind": "balance_above"}
        assert (await api.put("/ops/monitors/rich", json=wrong)).status_code == 422
        ruby = body | {"assetId": "RUBY"}
        assert (await api.put("/ops/monitors/ruby", json=ruby)).status_code == 422
        assert (await api.delete("/ops/monitors/big-spender")).status_code == 204
        assert (await api.delete("/ops/monitors/big-spender")).status_code == 404
        assert (await api.get("/ops/monitors")).json()["monitors"] == []


class TestReads:
    async def test_balance_history_and_transaction(
        self, api: httpx.AsyncClient, stack: Settings
    ) -> None:
        """Balances (projected and consistent), paginated history and a single transaction."""
        for i in range(5):
            await api.post("/wallet/topup", json=_body(userId="bea", amount=10 + i))
        await api.post("/wallet/topup", json=_body(userId="bea", assetId="DIAMONDS", amount=3))
        consistent = await api.get("/wallet/bea/balance", params={"consistent": "true"})
        assert consistent.json() == {
            "userId": "bea", "balances": {"DIAMONDS": 3, "GOLD": 60},
            "breakdown": {
                "DIAMONDS": {"paid": 3, "free": 0, "held": 0, "available": 3, "debt": 0},
                "GOLD": {"paid": 60, "free": 0, "held": 0, "available": 60, "debt": 0},
            },
        }  # fmt: skip
        await wait_projected(stack)
        assert (await api.get("/wallet/bea/balance")).json() == consistent.json()
        first = (await api.get("/wallet/bea/transactions", params={"limit": 4})).json()
        assert len(first["items"]) == 4 and first["nextCursor"]
        assert first["items"][0]["assetId"] == "DIAMONDS"  # newest first
        rest = await api.get("/wallet/bea/transactions",
                             params={"limit": 4, "cursor": first["nextCursor"]})  # fmt: skip
        assert len(rest.json()["items"]) == 2 and rest.json()["nextCursor"] is None
        gold = await api.get("/wallet/bea/transactions", params={"asset": "GOLD"})
        assert [i["amount"] for i in gold.json()["items"]] == [14, 13, 12, 11, 10]
        item = first["items"][1]
        one = await api.get(f"/wallet/transactions/{item['transactionId']}")
        assert one.status_code == 200 and one.json()["userId"] == "bea"
        assert one.json()["balanceAfter"] == item["balanceAfter"]
        missing = await api.get(f"/wallet/transactions/{uuid.uuid4()}")
        assert missing.status_code == 404
        assert (await api.get("/wallet/nobody/balance")).json()["balances"] == {}

    async def test_a_user_named_transactions_has_a_wallet_too(self, api: httpx.AsyncClient) -> None:
        """The user routes win over `/wallet/transactions/{id}` for the words they end in; a
        transaction id still finds its transaction."""
        written = await api.post("/wallet/topup", json=_body(userId="transactions", amount=3))
        read = await api.get("/wallet/transactions/balance", params={"consistent": "true"})
        history = await api.get("/wallet/transactions/transactions")
        one = await api.get(f"/wallet/transactions/{written.json()['transactionId']}")
        assert read.json()["balances"] == {"GOLD": 3}
        assert [i["amount"] for i in history.json()["items"]] == [3]
        assert one.status_code == 200 and one.json()["userId"] == "transactions"

    async def test_balance_at_a_time_and_statements(self, api: httpx.AsyncClient) -> None:
        """`?at=` reads the ledger as it stood then; a statement comes as JSON or CSV; a time
        without its offset, or a period that ends before it starts, is 422."""
        await api.post("/wallet/topup", json=_body(userId="cy", amount=40))
        mid = datetime.now(UTC)
        await api.post("/wallet/spend", json=_body(userId="cy", amount=15))
        then = (await api.get("/wallet/cy/balance", params={"at": mid.isoformat()})).json()
        assert then["balances"] == {"GOLD": 40} and then["breakdown"]["GOLD"]["version"] == 1
        period = {"from": (mid - timedelta(hours=1)).isoformat(),
                  "to": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()}  # fmt: skip
        gold = (await api.get("/wallet/cy/statement", params=period)).json()["assets"]["GOLD"]
        assert [m["amount"] for m in gold["movements"]] == [40, -15]
        assert gold["opening"]["balance"] == 0 and gold["closing"]["balance"] == 25
        as_csv = await api.get("/wallet/cy/statement", params=period,
                               headers={"Accept": "text/csv"})  # fmt: skip
        assert as_csv.headers["content-type"].startswith("text/csv")
        disposition = as_csv.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="statement-cy-')
        assert as_csv.text.splitlines()[-1].startswith("GOLD,closing,")
        naive = await api.get("/wallet/cy/balance", params={"at": "2026-12-03T12:00:00"})
        far = await api.get("/wallet/cy/balance", params={"at": "9999-12-31T23:59:59Z"})
        both = await api.get("/wallet/cy/balance", params={"at": mid.isoformat(),
                                                           "after": "GOLD:1"})  # fmt: skip
        assert far.status_code == both.status_code == 422
        backwards = await api.get("/wallet/cy/statement",
                                  params={"from": period["to"], "to": period["from"]})  # fmt: skip
        assert naive.status_code == backwards.status_code == 422

    async def test_health_ready_and_docs_need_no_key(self, api_url: str) -> None:
        """Liveness, readiness with projector lag, and the OpenAPI document, without a key."""
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as anonymous:
            assert (await anonymous.get("/health")).json() == {"status": "ok"}
            ready = await anonymous.get("/ready")
            spec = (await anonymous.get("/openapi.json")).json()
        assert ready.status_code == 200 and ready.json()["postgres"] == "ok"
        assert "projectorLagSeconds" in ready.json()
        assert {"/wallet/topup", "/wallet/{userId}/balance", "/ops/audit"} <= spec["paths"].keys()
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def _reads_after(answered_by: str) -> float:
    """This process's wallet_reads_after_total (the API under test runs in it)."""
    found = REGISTRY.get_sample_value("wallet_reads_after_total", {"answered_by": answered_by})
    return found or 0.0


class TestReadYourWrites:
    async def test_a_read_after_a_position_sees_that_write(self, stack: Settings) -> None:
        """With nothing projecting and no cache, a plain read misses a write, and a read
        `?after=` its reply's position waits, then answers it from the ledger."""
        key = _bearer(await new_key(stack, "rw", list(SCOPES)))
        async with (
            _serving(stack, api_balance_cache_max=0, api_read_wait_ms=300) as base,
            httpx.AsyncClient(base_url=base, timeout=30, headers=key) as api,
        ):
            first = (await api.post("/wallet/topup", json=_body(userId="dee", amount=9))).json()
            second = (await api.post("/wallet/topup", json=_body(userId="dee", amount=4))).json()
            plain = (await api.get("/wallet/dee/balance")).json()
            from_ledger = _reads_after("ledger")
            began = asyncio.get_running_loop().time()
            after = await api.get("/wallet/dee/balance", params={"after": second["position"]})
            waited_s = asyncio.get_running_loop().time() - began
            answered_by_ledger = _reads_after("ledger") - from_ledger
            bad = await api.get("/wallet/dee/balance", params={"after": "GOLD:0"})
            ahead = await api.get("/wallet/dee/balance", params={"after": "GOLD:3,RUBY:1"})
        assert (first["position"], second["position"]) == ("GOLD:1", "GOLD:2")
        assert plain["balances"] == {}  # nothing projected
        assert after.json()["balances"] == {"GOLD": 13} and waited_s >= 0.25
        assert answered_by_ledger == 1
        assert bad.status_code == ahead.status_code == 422
        assert ahead.json()["detail"] == "no write of dee is at GOLD:3, RUBY:1"

    async def test_a_projected_position_is_answered_without_waiting(self, stack: Settings) -> None:
        """Once the cache or the projection holds the position, the read answers without
        waiting out its bound (30 s here)."""
        key = _bearer(await new_key(stack, "rw", list(SCOPES)))
        async with (
            running_projector(stack),
            _serving(stack, api_read_wait_ms=30_000) as base,
            httpx.AsyncClient(base_url=base, timeout=60, headers=key) as api,
        ):
            written = (await api.post("/wallet/topup", json=_body(userId="eve", amount=5))).json()
            await wait_projected(stack)
            began = asyncio.get_running_loop().time()
            read = await api.get("/wallet/eve/balance", params={"after": written["position"]})
            waited_s = asyncio.get_running_loop().time() - began
        assert read.json()["balances"] == {"GOLD": 5} and waited_s < 15


class TestAuthentication:
    async def test_missing_malformed_wrong_and_revoked_keys_are_401(
        self, api_url: str, stack: Settings
    ) -> None:
        """Every route but the probes refuses a request without a live, matching key."""
        key = await new_key(stack, "soon-revoked", list(SCOPES))
        key_id = key.split("_")[1]
        wrong_secret = f"dw_{key_id}_{'A' * 43}"
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
            refused = [
                await http.post("/wallet/topup", json=_body()),
                await http.get("/wallet/ana/balance", headers={"Authorization": f"Basic {key}"}),
                await http.get("/wallet/ana/balance", headers=_bearer("not-a-key")),
                await http.get("/wallet/ana/balance", headers=_bearer(wrong_secret)),
                await http.get("/ops/audit", headers=_bearer(key.upper())),
            ]
            assert (await http.get("/wallet/ana/balance", headers=_bearer(key))).status_code == 200
            await _revoke(stack, "soon-revoked")
            refused.append(await http.get("/wallet/ana/balance", headers=_bearer(key)))
        assert [r.status_code for r in refused] == [401] * 6
        assert all(r.headers["www-authenticate"] == "Bearer" for r in refused)
        assert (await fetch(stack, "SELECT count(*) AS n FROM processed_commands"))[0]["n"] == 0


class TestScopes:
    async def test_each_route_group_needs_its_scope(self, api_url: str, stack: Settings) -> None:
        """commands:write for writes, wallets:read for reads, ops for the audit, both
        commands:write and ops for a reverse; else 403."""
        writer = _bearer(await new_key(stack, "writer", ["commands:write"]))
        reader = _bearer(await new_key(stack, "reader", ["wallets:read"]))
        operator = _bearer(await new_key(stack, "operator", ["ops"]))
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
            written = await http.post("/wallet/topup", json=_body(amount=7), headers=writer)
            codes = {
                "reader writes": await http.post("/wallet/topup", json=_body(), headers=reader),
                "writer reads": await http.get("/wallet/ana/balance", headers=writer),
                "reader audits": await http.get("/ops/audit", headers=reader),
                "operator reads": await http.get("/wallet/ana/transactions", headers=operator),
                "writer reverses": await http.post(
                    "/wallet/reverse",
                    headers=writer,
                    json={
                        "userId": "ana",
                        "assetId": "GOLD",
                        "idempotencyKey": "x",
                        "transactionId": str(uuid.uuid4()),
                        "reason": "no ops scope",
                    },
                ),
            }
            read = await http.get("/wallet/ana/balance?consistent=true", headers=reader)
            audit = await http.get("/ops/audit", headers=operator)
        assert written.status_code == 201
        assert {name: r.status_code for name, r in codes.items()} == dict.fromkeys(codes, 403)
        assert read.json()["balances"] == {"GOLD": 7}
        assert audit.status_code == 200 and audit.json()["ok"] is True
        assert len(audit.json()["checks"]) >= 8


async def _revoke(settings: Settings, name: str) -> None:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        assert await revoke_key(conn, name)
    finally:
        await conn.close()


BAD_BODIES: list[tuple[str, Any]] = [
    ("amount zero", _body(amount=0)),
    ("amount negative", _body(amount=-5)),
    ("amount float", _body(amount=1.5)),
    ("amount string", _body(amount="5")),
    ("amount bool", _body(amount=True)),
    ("amount huge", _body(amount=10**20)),
    ("amount 1e17", _body(amount=1e17)),
    ("missing userId", {k: v for k, v in _body().items() if k != "userId"}),
    ("long key", _body(idempotencyKey="k" * 5000)),
    ("long description", _body(description="d" * 5000)),
    ("unknown field", _body(isAdmin=True)),
    ("bad user id", _body(userId="../etc/passwd")),
    ("not an object", [1, 2]),
    # A JavaScript substring through an emoji: was a 500 (FastAPI echoed it, unencodable).
    ("lone surrogate", _body(description="a\ud800b")),
    ("nul in key", _body(idempotencyKey="a\x00b")),
]


class TestBadInput:
    @pytest.mark.parametrize(("name", "body"), BAD_BODIES, ids=[n for n, _ in BAD_BODIES])
    async def test_bad_bodies_are_422(
        self, api: httpx.AsyncClient, stack: Settings, name: str, body: Any
    ) -> None:
        """Each malformed body is a 422 with a reason but not the input echoed, and writes
        nothing."""
        response = await api.post("/wallet/spend", content=_json(body),
                                   headers={"content-type": "application/json"})  # fmt: skip
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail and all(set(d) == {"loc", "msg", "type"} for d in detail), detail
        assert (await fetch(stack, "SELECT count(*) AS n FROM processed_commands"))[0]["n"] == 0

    async def test_repeated_keys_are_422(self, api: httpx.AsyncClient) -> None:
        """A body repeating a key is refused with 422 naming the key, whichever copy differs."""
        text = _json(_body()).decode().replace('"amount":', '"amount": 1, "amount":', 1)
        answer = await api.post("/wallet/topup", content=text,
                                headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code == 422
        [detail] = answer.json()["detail"]
        assert detail["type"] == "duplicate_key" and detail["loc"] == ["body", "amount"]

    async def test_method_errors_are_405_with_allow_and_head_works(
        self, api: httpx.AsyncClient
    ) -> None:
        """A method a route does not take is 405 with Allow (PUT with a JSON body included);
        HEAD on a GET route answers as GET does, without the body."""
        put = await api.put("/wallet/someone/balance", json={"a": 1})
        get = await api.get("/wallet/topup")
        head = await api.head("/wallet/someone/balance")
        assert (put.status_code, put.headers["allow"]) == (405, "GET")
        assert (get.status_code, get.headers["allow"]) == (405, "POST")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0

    async def test_transport_level_refusals(self, api: httpx.AsyncClient, stack: Settings) -> None:
        """No body, invalid JSON, wrong content type, 1 MB body, bad paths: all 4xx."""
        json_header = {"content-type": "application/json"}
        assert (await api.post("/wallet/topup", headers=json_header)).status_code == 422
        bad_json = await api.post("/wallet/topup", content=b"{nope", headers=json_header)
        assert bad_json.status_code == 422
        form = await api.post("/wallet/topup", data={"userId": "x"})
        assert form.status_code == 415
        big = await api.post("/wallet/topup", content=b"[" + b"1," * 500_000 + b"1]",
                             headers=json_header)  # fmt: skip
        assert big.status_code == 413
        assert (await api.get("/wallet/transactions/not-a-uuid")).status_code == 422
        assert (await api.get("/wallet/bea/transactions", params={"limit": 0})).status_code == 422
        too_many = await api.get("/wallet/bea/transactions", params={"limit": 10_000})
        assert too_many.status_code == 422
        for cursor in ("x", "9" * 20):  # past bigint: was a 500, found by the fuzz test
            found = await api.get("/wallet/bea/transactions", params={"cursor": cursor})
            assert found.status_code == 422
        assert (await fetch(stack, "SELECT count(*) AS n FROM processed_commands"))[0]["n"] == 0


class TestConcurrencyLimit:
    async def test_requests_past_the_limit_get_503_at_once(self, stack: Settings) -> None:
        """With every slot held by a write awaiting its reply, more requests get 503, not a
        queue."""
        settings = stack.model_copy(update={"api_port": free_port(), "api_concurrency_max": 4,
                                            "api_reply_timeout_ms": 3000})  # fmt: skip
        key = await new_key(stack, "busy", ["commands:write"])
        stop = asyncio.Event()
        server = asyncio.create_task(serve(settings, stop))  # no processor: replies never come
        base = f"http://127.0.0.1:{settings.api_port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as probe:
                await _wait_up(probe)
            clients = [httpx.AsyncClient(base_url=base, timeout=30, headers=_bearer(key))
                       for _ in range(8)]  # fmt: skip
            holding = [asyncio.create_task(c.post("/wallet/topup", json=_body()))
                       for c in clients[:3]]  # fmt: skip
            await asyncio.sleep(0.5)  # three writes now wait for replies, holding their slots
            late = await asyncio.gather(*(c.post("/wallet/topup", json=_body())
                                          for c in clients[3:]))  # fmt: skip
            held = await asyncio.gather(*holding)
            for c in clients:
                await c.aclose()
        finally:
            stop.set()
            await asyncio.wait_for(server, 30)
        assert [r.status_code for r in held] == [202] * 3  # accepted for processing, reply late
        assert [r.status_code for r in late] == [503] * 5


def _json(body: Any) -> bytes:
    import json

    return json.dumps(body).encode()


@contextlib.asynccontextmanager
async def _api_without_projector(settings: Settings) -> AsyncIterator[str]:
    """A processor and an API, no projector: the projection stays empty."""
    stop = asyncio.Event()
    async with running_processor(settings):
        server = asyncio.create_task(serve(settings, stop))
        base = f"http://127.0.0.1:{settings.api_port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as probe:
                await _wait_up(probe)
            yield base
        finally:
            stop.set()
            await asyncio.wait_for(server, 30)


async def _balances_become(api: httpx.AsyncClient, path: str, want: dict[str, int]) -> None:
    async def shown() -> bool:
        return bool((await api.get(path)).json()["balances"] == want)

    await eventually(shown, 10, f"the balances become {want}")


class TestBalanceCache:
    async def test_balances_come_from_the_ledger_and_follow_its_events(
        self, stack: Settings
    ) -> None:
        """With no projector running, a balance read still shows the ledger (the cache reads
        it on a miss) and then every later top-up (the events move it)."""
        settings = stack.model_copy(update={"api_port": free_port()})
        key = await new_key(stack, "cache", list(SCOPES))
        async with (
            _api_without_projector(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=30, headers=_bearer(key)) as api,
        ):
            await api.post("/wallet/topup", json=_body(userId="dee", amount=10))
            assert (await api.get("/wallet/dee/balance")).json()["balances"] == {"GOLD": 10}
            for amount in (5, 7):
                await api.post("/wallet/topup", json=_body(userId="dee", amount=amount))
            await api.post("/wallet/topup", json=_body(userId="dee", assetId="DIAMONDS", amount=2))
            await _balances_become(api, "/wallet/dee/balance", {"DIAMONDS": 2, "GOLD": 22})
        projected = await fetch(stack, "SELECT count(*) AS n FROM balances")
        assert projected[0]["n"] == 0, "the projector ran: the test shows nothing"

    async def test_the_fast_path_answers_as_the_route_does(
        self, api: httpx.AsyncClient, api_url: str, stack: Settings
    ) -> None:
        """A plain balance read (answered before the route stack) and the same read through
        the route give the same bytes; refusals are the route's own."""
        await api.post("/wallet/topup", json=_body(userId="eve", amount=3))
        plain = await api.get("/wallet/eve/balance")
        routed = await api.get("/wallet/eve/balance", params={"consistent": "false"})
        assert (plain.status_code, plain.content) == (routed.status_code, routed.content)
        assert plain.headers["content-type"] == routed.headers["content-type"]
        assert plain.json() == {
            "userId": "eve", "balances": {"GOLD": 3},
            "breakdown": {"GOLD": {"paid": 3, "free": 0, "held": 0, "available": 3, "debt": 0}},
        }  # fmt: skip
        head = await api.head("/wallet/eve/balance")
        assert head.status_code == 200 and head.content == b""
        writer = _bearer(await new_key(stack, "writes-only", ["commands:write"]))
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
            assert (await http.get("/wallet/eve/balance", headers=writer)).status_code == 403
            assert (await http.get("/wallet/eve/balance")).status_code == 401
            wrong = {"Authorization": "Basic abc"}
            assert (await http.get("/wallet/eve/balance", headers=wrong)).status_code == 401
            # Two keys: the first counts, on both paths (the routes' HTTPBearer reads it).
            valid = api.headers["Authorization"]
            both = [("Authorization", "Bearer not-a-key"), ("Authorization", valid)]
            assert (await http.get("/wallet/eve/balance", headers=both)).status_code == 401
        assert (await api.get("/wallet/-eve/balance")).status_code == 422


class TestWriteFastPath:
    async def test_a_plain_write_answers_as_the_route_does(self, api: httpx.AsyncClient) -> None:
        """A write answered before the route stack and the same write through the route (a
        query string sends it there) give the same status and bytes."""
        body = _body(userId="fay", amount=4, idempotencyKey="fast-1")
        assert (await api.post("/wallet/topup", json=body)).status_code == 201
        routed = await api.post("/wallet/topup", params={"via": "route"}, json=body)
        fast = await api.post("/wallet/topup", json=body)
        assert fast.status_code == 200 and fast.json()["duplicate"] is True
        assert (fast.status_code, fast.content) == (routed.status_code, routed.content)
        assert fast.headers["content-type"] == routed.headers["content-type"]
        overdraft = _body(userId="fay", amount=99)
        routed = await api.post("/wallet/spend", params={"via": "route"}, json=overdraft)
        fast = await api.post("/wallet/spend", json=overdraft | {"idempotencyKey": "fast-2"})
        assert (fast.status_code, routed.status_code) == (402, 402)
        assert fast.json() | {"transactionId": None} == routed.json() | {"transactionId": None}


class TestPurchases:
    async def test_a_purchase_a_conversion_and_their_reads(self, api: httpx.AsyncClient) -> None:
        """201 a purchase in GOLD and DIAMONDS and a conversion, each part in `purchase`;
        402 a cost that cannot be paid (refusedAsset), 422 a malformed one; GET
        /wallet/purchases/{id} lists the parts, 404 an unknown id."""
        await api.post("/wallet/topup", json=_body(userId="pia", amount=500))
        await api.post("/wallet/topup", json=_body(userId="pia", assetId="DIAMONDS", amount=20))
        body = {"userId": "pia", "idempotencyKey": "p1", "sku": "sword-of-dawn",
                "costs": [{"assetId": "GOLD", "amount": 100},
                          {"assetId": "DIAMONDS", "amount": 5}]}  # fmt: skip
        bought = await api.post("/wallet/purchase", json=body)
        assert bought.status_code == 201, bought.text
        info = bought.json()["purchase"]
        assert (bought.json()["assetId"], info["kind"], info["sku"]) == (
            "GOLD", "item", "sword-of-dawn")  # fmt: skip
        assert [(p["assetId"], p["amount"], p["available"]) for p in info["parts"]] == [
            ("GOLD", -100, 400), ("DIAMONDS", -5, 15)]  # fmt: skip
        poor = await api.post("/wallet/purchase", json=body | {
            "idempotencyKey": "p2", "costs": [{"assetId": "GOLD", "amount": 1},
                                              {"assetId": "DIAMONDS", "amount": 99}]})  # fmt: skip
        assert poor.status_code == 402 and poor.json()["purchase"]["refusedAsset"] == "DIAMONDS"
        converted = await api.post("/wallet/purchase", json={
            "userId": "pia", "idempotencyKey": "c1", "sku": "gold-pack",
            "costs": [{"assetId": "DIAMONDS", "amount": 10}],
            "grants": [{"assetId": "GOLD", "amount": 1000}]})  # fmt: skip
        assert converted.status_code == 201 and converted.json()["purchase"]["kind"] == "conversion"
        bad = await api.post("/wallet/purchase", json=body | {"idempotencyKey": "p3", "costs": []})
        assert bad.status_code == 422
        read = (await api.get(f"/wallet/purchases/{info['id']}")).json()
        assert (read["userId"], read["kind"]) == ("pia", "item")
        assert [(p["type"], p["assetId"], p["amount"]) for p in read["parts"]] == [
            ("purchase", "GOLD", -100), ("purchase", "DIAMONDS", -5)]  # fmt: skip
        assert (await api.get(f"/wallet/purchases/{uuid.uuid4()}")).status_code == 404
