"""PostgreSQL connections: every pool and connection has timeouts and a bounded size."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from foundation.errors import StorageError, StorageRefusedError, StorageUnavailableError
from foundation.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")

# SQLSTATE classes of a database that is away or gave up, not one that refused: connection
# exceptions, operator intervention (shutdown, cancel), transaction rollback (serialization,
# deadlock), and lock_not_available.
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "57", "40"})
_UNAVAILABLE_SQLSTATES = frozenset({"55P03"})

# Errors of a database call that trying again later may cure: the server gone or restarting, a
# timeout, a statement refused (its transaction rolled back whole). InternalClientError is
# asyncpg losing track of a connection the server dropped mid-operation (asyncpg issue #1069):
# seen here when PostgreSQL was stopped under load; uncaught, it killed the processor.
RETRIABLE_DB_ERRORS = (
    StorageError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

# SQLSTATE classes of errors a statement's data causes, and so one record of a batch can: data
# exceptions (an unstorable character, a number out of range), integrity violations (a check or
# unique constraint), program limits (an index row too large) and PL/pgSQL raises. The rest
# (connections, resources, locks and serialization, privileges, a missing table, the server's
# own errors) fail every record alike and are never a record's fault.
_RECORD_SQLSTATE_CLASSES = frozenset({"22", "23", "54", "P0"})


def storage_error(exc: BaseException) -> StorageError:
    """The project's error for a database call's failure (see foundation.errors)."""
    kind = failure_kind(exc)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    refused = isinstance(exc, asyncpg.PostgresError) or records_fault(exc)
    if (
        not refused
        or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
        or (sqlstate in _UNAVAILABLE_SQLSTATES)
    ):
        return StorageUnavailableError(kind, sqlstate=sqlstate or None)
    return StorageRefusedError(kind, sqlstate=sqlstate or None, records_fault=records_fault(exc))


def translated(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """A storage method whose database errors come out as StorageError."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except StorageError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                OSError, TimeoutError) as exc:  # fmt: skip
            raise storage_error(exc) from exc

    return wrapper


def records_fault(exc: BaseException) -> bool:
    """Whether a failed batch's records may be the cause (see processor.narrowing): an error
    of their data, or anything that is not a database error at all (the planner raising)."""
    if isinstance(exc, StorageError):
        return exc.data.get("records_fault") is True
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in _RECORD_SQLSTATE_CLASSES
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return True  # asyncpg's own DataError: a value it cannot encode for the server
    return not isinstance(exc, RETRIABLE_DB_ERRORS)


ERROR_CHARS_MAX = 500  # of a failure's kind, as stored for operators


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a partition is retried: its failures in a row and the last one's kind."""

    count: int
    error: str


def failure_kind(exc: BaseException) -> str:
    """An error's kind for logs and operators, never its message: a message may quote the
    record (PostgreSQL's "invalid input syntax ... \"<value>\"" does)."""
    if isinstance(exc, StorageError):
        return exc.message
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__} (SQLSTATE {sqlstate})" if sqlstate else type(exc).__name__


# What query helpers accept: a plain connection or one borrowed from a pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def create_pool(settings: Settings, size_max: int | None = None) -> asyncpg.Pool:
    database_url, _ = settings.require_services()
    timeout_s = settings.db_timeout_ms / 1000
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=size_max or settings.db_pool_size_max,
        timeout=timeout_s,
        command_timeout=timeout_s,
        # Statements are few and fixed; a prepared-statement cache is what we want, but each
        # execution planned for the tables as they are now (they grow from empty; a generic
        # plan made at the start would keep scanning them whole).
        statement_cache_size=256,
        server_settings={"plan_cache_mode": "force_custom_plan"},
    )
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """One bounded connection for a short operator command, closed on the way out."""
    database_url, _ = settings.require_services()
    timeout_s = settings.db_timeout_ms / 1000
    conn = await asyncpg.connect(database_url, timeout=timeout_s, command_timeout=timeout_s)
    try:
        yield conn
    finally:
        await conn.close()
