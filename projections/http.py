"""The HTTP query routes: balances, history, one transaction, one transfer, one purchase,
liveness and readiness."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from foundation import metrics
from foundation.settings import Settings
from projections import queries, statements
from projections.balance_cache import Accounts, balance_document, balances_of
from projections.events_follower import EventsFollower
from projections.verify import verify
from schemas.alerts import MonitorId, MonitorKind
from schemas.commands import AssetCode
from storage import limits, monitors
from storage.db import RETRIABLE_DB_ERRORS
from storage.projection_store import LIVE, lag_seconds, projected_accounts
from storage.stalls import stalls

router = APIRouter(tags=["queries"])  # needs the wallets:read scope
probes = APIRouter(tags=["probes"])  # open: load balancers and orchestrators call these
ops = APIRouter(prefix="/ops", tags=["ops"])  # needs the ops scope
USER_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@+-]*"
USER_ID_CHARS_MAX = 128
UserPath = Annotated[
    str, Path(min_length=1, max_length=USER_ID_CHARS_MAX, pattern=f"^{USER_ID_PATTERN}$")
]
READY_TIMEOUT_S = 2.0


def _pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool  # type: ignore[no-any-return]


# A reply's position (schemas.replies.Reply.position), up to eight of them comma-separated.
_POSITION = r"[A-Z][A-Z0-9_]*:[1-9][0-9]{0,17}"
_AFTER_PATTERN = f"^{_POSITION}(,{_POSITION}){{0,7}}$"
# A read waiting for its position looks again after 10 ms, then twice as long each time up to
# 200 ms: the cache catches up within milliseconds, and a read that must wait for the
# projection (no cache) asks PostgreSQL a few times a second, not a hundred.
_READ_POLL_S = 0.01
_READ_POLL_MAX_S = 0.2
_VERSION = 1  # an account state's (balance, version, paid, held, debt) version
_NONE = (0, 0, 0, 0, 0)  # an account without entries


@router.get("/wallet/{userId}/balance")
async def get_balance(
    userId: UserPath,
    request: Request,
    consistent: bool = False,
    at: Annotated[AwareDatetime | None, Query()] = None,
    after: Annotated[str | None, Query(max_length=400, pattern=_AFTER_PATTERN)] = None,
) -> dict[str, Any]:
    """Every asset's balance, and how much of it is paid and free. Eventually consistent (the
    balance cache, kept by the ledger events, or else the projection) unless
    `consistent=true`, which reads the ledger itself; `after` (a reply's `position`, or
    several comma-separated): no older than those writes; `at` (RFC 3339, with its offset):
    as the ledger says it stood then."""
    if at is not None:
        if consistent or after is not None:
            raise HTTPException(422, "`at` reads the ledger as it was: not with `after` or "
                                "`consistent`")  # fmt: skip
        try:
            async with _pool(request).acquire() as conn:
                then = await statements.balances_at(conn, userId, at)
        except statements.ReadRefusedError as exc:
            raise HTTPException(status_code=422, detail=exc.message) from exc
        return statements.balances_document(userId, then, at)
    if after is not None and not consistent:
        wanted: dict[str, int] = {}
        for asset, version in (p.split(":") for p in after.split(",")):
            wanted[asset] = max(wanted.get(asset, 0), int(version))
        return balance_document(userId, balances_of(await _after(request, userId, wanted)))
    follower: EventsFollower | None = request.app.state.follower
    found = None
    if follower is not None and not consistent:
        found = await follower.balances(_pool(request), userId)
    if found is None:
        async with _pool(request).acquire() as conn:
            found = await queries.balances(conn, userId, consistent)
    return balance_document(userId, found)


async def _after(request: Request, user_id: str, wanted: dict[str, int]) -> Accounts:
    """Read-your-writes: the cache's (or else the projection's) accounts once each wanted
    asset's version has reached its position, looking again (backing off) for at most
    WALLET_API_READ_WAIT_MS; then the ledger, which holds every position a reply gave (a
    reply is published after its transaction commits)."""
    settings: Settings = request.app.state.settings
    follower: EventsFollower | None = request.app.state.follower
    pool = _pool(request)
    deadline_s = asyncio.get_running_loop().time() + settings.api_read_wait_ms / 1000
    poll_s = _READ_POLL_S
    waited = False
    while True:
        found = None if follower is None else await follower.accounts(pool, user_id)
        if found is None:
            async with pool.acquire() as conn:
                found = await projected_accounts(conn, LIVE, user_id)
        if all(a in found and found[a][_VERSION] >= v for a, v in wanted.items()):
            metrics.READS_AFTER.labels("waited" if waited else "at_once").inc()
            return found
        waited = True
        left_s = deadline_s - asyncio.get_running_loop().time()
        if left_s <= 0:
            break
        await asyncio.sleep(min(poll_s, left_s))
        poll_s = min(poll_s * 2, _READ_POLL_MAX_S)
    metrics.READS_AFTER.labels("ledger").inc()
    async with pool.acquire() as conn:
        found = await queries.ledger_accounts(conn, user_id)
    ahead = sorted(f"{a}:{v}" for a, v in wanted.items() if found.get(a, _NONE)[_VERSION] < v)
    if ahead:  # no reply gave it: every reply's position is in the ledger before it is sent
        raise HTTPException(422, f"no write of {user_id} is at {', '.join(ahead)}")
    return found


@router.get("/wallet/{userId}/statement", response_model=None)
async def get_statement(
    userId: UserPath,
    request: Request,
    start: Annotated[AwareDatetime, Query(alias="from")],
    end: Annotated[AwareDatetime, Query(alias="to")],
    asset: Annotated[AssetCode | None, Query()] = None,
) -> dict[str, Any] | Response:
    """Per asset: the balance before `from`, every movement in [from, to) and the balance
    before `to`, from the ledger. JSON, or CSV with `Accept: text/csv`."""
    if start >= end:
        raise HTTPException(status_code=422, detail="`from` must be before `to`")
    try:
        async with _pool(request).acquire() as conn:
            found = await statements.statement(conn, userId, start, end, asset)
    except statements.ReadRefusedError as exc:
        raise HTTPException(status_code=422, detail=exc.message) from exc
    if "text/csv" in request.headers.get("accept", ""):
        name = f"statement-{userId}-{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}.csv"
        disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(statements.as_csv(found, start, end), media_type="text/csv",
                        headers=disposition)  # fmt: skip
    return statements.document(userId, found, start, end)


@router.get("/wallet/{userId}/transactions")
async def get_history(
    userId: UserPath,
    request: Request,
    asset: Annotated[AssetCode | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=queries.HISTORY_LIMIT_MAX)] = 20,
    # 18 digits at most: a cursor is an entry id, and every 18-digit number fits in bigint
    cursor: Annotated[str | None, Query(max_length=18, pattern=r"^[0-9]+$")] = None,
) -> dict[str, Any]:
    """A user's transactions, newest first; pass `nextCursor` back as `cursor` for more."""
    async with _pool(request).acquire() as conn:
        items, next_cursor = await queries.history(
            conn, userId, asset, limit, int(cursor) if cursor else None
        )
    return {"items": items, "nextCursor": str(next_cursor) if next_cursor else None}


# After the user routes: a user named `transactions` reads its balance and history (a
# transaction id, a UUID, is never `balance`, `statement` or `transactions`).
@router.get("/wallet/transactions/{transactionId}")
async def get_transaction(transactionId: uuid.UUID, request: Request) -> dict[str, Any]:
    """One transaction, as the user's side of the ledger sees it."""
    async with _pool(request).acquire() as conn:
        item = await queries.transaction(conn, transactionId)
    if item is None:
        raise HTTPException(status_code=404, detail="no such transaction")
    return item


@router.get("/wallet/transfers/{transferId}")
async def get_transfer(transferId: uuid.UUID, request: Request) -> dict[str, Any]:
    """A transfer (its id: the sender's debit's transaction id, the one a late POST
    /wallet/transfer answers with) and its steps: pending, completed or refused."""
    async with _pool(request).acquire() as conn:
        found = await queries.transfer(conn, transferId)
    if found is None:
        raise HTTPException(status_code=404, detail="no such transfer")
    return found


@router.get("/wallet/purchases/{purchaseId}")
async def get_purchase(purchaseId: uuid.UUID, request: Request) -> dict[str, Any]:
    """A purchase (its id: the `purchase.id` of its reply) and each asset it moved."""
    async with _pool(request).acquire() as conn:
        found = await queries.purchase(conn, purchaseId)
    if found is None:
        raise HTTPException(status_code=404, detail="no such purchase")
    return found


@probes.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@probes.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: PostgreSQL and Kafka reachable, no partition stalled (its processing or its
    projection failing WALLET_STALL_FAILURES times in a row), and how far the projector lags."""
    checks: dict[str, Any] = {}
    settings: Settings = request.app.state.settings
    try:
        async with asyncio.timeout(READY_TIMEOUT_S), _pool(request).acquire() as conn:
            checks["postgres"] = "ok"
            checks["projectorLagSeconds"] = round(await lag_seconds(conn), 3)
            found = await stalls(conn, settings.commands_topic, settings.stall_failures)
            checks["stalled"] = [s.describe() for s in found]
    except RETRIABLE_DB_ERRORS as exc:
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    checks["kafka"] = "ok" if await request.app.state.client.broker_reachable() else "unreachable"
    ok = checks["postgres"] == "ok" and checks["kafka"] == "ok" and not checks.get("stalled")
    return JSONResponse({"status": "ready" if ok else "not ready", **checks}, 200 if ok else 503)


@ops.get("/audit")
async def audit(request: Request) -> dict[str, Any]:
    """`wallet verify` over HTTP: every integrity check of the ledger and the projection."""
    async with _pool(request).acquire() as conn:
        results = await verify(conn)
    return {
        "ok": all(r.ok for r in results),
        "checks": [
            {"name": r.name, "problems": r.problems, "examples": r.examples} for r in results
        ],
    }


class LimitsBody(BaseModel):
    """A wallet's daily caps: a UTC day's spends and captures, and transfers out, at most;
    null: no such cap (both null: none at all)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dailySpendMax: int | None = Field(default=None, ge=0, le=10**18)
    dailyTransferOutMax: int | None = Field(default=None, ge=0, le=10**18)


@ops.put("/limits/{userId}/{assetId}")
async def put_limits(
    userId: UserPath, assetId: AssetCode, body: LimitsBody, request: Request
) -> dict[str, Any]:
    """Set (or, both null, remove) a wallet's daily caps; a spend, capture or transfer past
    one is refused `daily_limit_exceeded` from the processors' next batch of the wallet."""
    caps = (body.dailySpendMax, body.dailyTransferOutMax)
    try:
        async with _pool(request).acquire() as conn:
            await limits.set_limits(conn, userId, assetId, caps, "api")
            found = await limits.list_limits(conn, userId)
    except asyncpg.ForeignKeyViolationError as exc:
        raise HTTPException(status_code=422, detail=f"no asset {assetId}") from exc
    return {"userId": userId, "limits": found}


class MonitorBody(BaseModel):
    """A monitor over every wallet of an asset (see `wallet monitors add`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: MonitorKind = Field(strict=False)
    assetId: AssetCode
    threshold: int = Field(ge=0, le=10**18)
    windowS: int | None = Field(default=None, ge=60, le=86_400)


@ops.put("/monitors/{monitorId}")
async def put_monitor(monitorId: MonitorId, body: MonitorBody, request: Request) -> dict[str, Any]:
    """Add or replace a monitor; processors apply it within WALLET_MONITORS_RELOAD_MS."""
    found = (monitorId, body.kind.value, body.assetId, body.threshold, body.windowS)
    try:
        async with _pool(request).acquire() as conn:
            await monitors.set_monitor(conn, found, "api")
            return {"monitors": await monitors.list_monitors(conn)}
    except asyncpg.ForeignKeyViolationError as exc:
        raise HTTPException(status_code=422, detail=f"no asset {body.assetId}") from exc
    except asyncpg.CheckViolationError as exc:
        raise HTTPException(status_code=422, detail="windowS is for spend_over_window, "
                            "and required by it") from exc  # fmt: skip
    except monitors.TooManyMonitorsError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc


@ops.get("/monitors")
async def get_monitors(request: Request) -> dict[str, Any]:
    """Every monitor, with who added it and when."""
    async with _pool(request).acquire() as conn:
        return {"monitors": await monitors.list_monitors(conn)}


@ops.delete("/monitors/{monitorId}", status_code=204)
async def delete_monitor(monitorId: MonitorId, request: Request) -> None:
    """Remove a monitor (404 when there is none)."""
    async with _pool(request).acquire() as conn:
        if not await monitors.remove_monitor(conn, monitorId):
            raise HTTPException(status_code=404, detail=f"no monitor {monitorId}")


@ops.get("/limits/{userId}")
async def get_limits(userId: UserPath, request: Request) -> dict[str, Any]:
    """A user's daily caps, per asset, with who set them and when."""
    async with _pool(request).acquire() as conn:
        return {"userId": userId, "limits": await limits.list_limits(conn, userId)}
