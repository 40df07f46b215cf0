"""The error model at the storage edge: which database failures are "unavailable" (retry soon)
and which "refused" (retry slowly, alert; a record's fault or not), as data."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg.exceptions._base import DataError as ClientDataError

from foundation.errors import StorageRefusedError, StorageUnavailableError
from storage.db import failure_kind, records_fault, storage_error


class TestStorageError:
    @pytest.mark.parametrize(
        "exc",
        [
            OSError("reset"),
            TimeoutError(),
            asyncpg.InterfaceError("closed"),
            asyncpg.ConnectionDoesNotExistError("gone"),
            asyncpg.DeadlockDetectedError("x"),
            asyncpg.AdminShutdownError("x"),
            asyncpg.LockNotAvailableError("x"),
        ],
    )
    def test_away_or_gave_up_is_unavailable(self, exc: BaseException) -> None:
        """A database away, shutting down or breaking a deadlock is unavailable: retriable."""
        error = storage_error(exc)
        assert isinstance(error, StorageUnavailableError) and error.retriable

    @pytest.mark.parametrize(
        ("exc", "fault"),
        [
            (asyncpg.CheckViolationError("x"), True),
            (asyncpg.UniqueViolationError("x"), True),
            (asyncpg.UntranslatableCharacterError("x"), True),
            (ClientDataError("x"), True),
            (asyncpg.DiskFullError("x"), False),
            (asyncpg.InsufficientPrivilegeError("x"), False),
            (asyncpg.UndefinedTableError("x"), False),
        ],
    )
    def test_an_answer_no_is_refused(self, exc: BaseException, fault: bool) -> None:
        """A database that answered no refused: a record's fault for its data's errors only."""
        error = storage_error(exc)
        assert isinstance(error, StorageRefusedError) and not error.retriable
        assert error.data["records_fault"] is fault and records_fault(error) is fault

    def test_the_kind_never_holds_the_message(self) -> None:
        """The error's text is its class and SQLSTATE, not what the database said."""
        error = storage_error(asyncpg.CheckViolationError("value 'secret' breaks it"))
        assert failure_kind(error) == "CheckViolationError (SQLSTATE 23514)"
        assert "secret" not in str(error)
