"""The one root error type of the service, with data on it so callers decide from data.

Modelled on aiokafka's errors: every error carries a stable `code` and a `retriable` flag.
A caller that sees `retriable` retries with backoff; anything else is surfaced to an operator.
"""

from __future__ import annotations


class WalletError(Exception):
    """Root of every error this project raises on purpose."""

    code: str = "wallet_error"
    retriable: bool = False

    def __init__(self, message: str, **data: object) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        if not self.data:
            return self.message
        details = ", ".join(f"{k}={v!r}" for k, v in sorted(self.data.items()))
        return f"{self.message} ({details})"


class ConfigError(WalletError):
    """A setting is missing or has a bad value; fix the environment and start again."""

    code = "config_error"


class FencedError(WalletError):
    """This process no longer owns the partition: another owner bumped the epoch.

    Not retriable by this owner: the partition's new owner carries on from the stored offset.
    """

    code = "fenced"


class StorageError(WalletError):
    """The database did not do what was asked. `message` is the error's kind (its class and
    SQLSTATE), never the database's message: that may quote a record."""

    code = "storage_error"


class StorageUnavailableError(StorageError):
    """The database could not be reached or gave up (connection lost, timeout, shutting down,
    a deadlock or serialization failure): retry soon; nothing about the data is wrong."""

    code = "storage_unavailable"
    retriable = True


class StorageRefusedError(StorageError):
    """The database answered no. `data["records_fault"]` says whether the records themselves
    may be the cause (a value it cannot store, a constraint they break: see
    processor.narrowing) or not (a full disk, missing privileges, a missing table). Either
    way: retry slowly, alert, never skip a record on the strength of this alone."""

    code = "storage_refused"


class BrokerUnavailableError(WalletError):
    """The Kafka-protocol broker did not answer in time; retry with backoff."""

    code = "broker_unavailable"
    retriable = True


class ReplyTimeoutError(WalletError):
    """No reply arrived for a command within the caller's deadline (it may still be processed)."""

    code = "reply_timeout"
    retriable = True


class DevStackError(WalletError):
    """The embedded PostgreSQL or broker could not be started."""

    code = "dev_stack_error"


class OperatorRequestError(WalletError):
    """An operator command cannot do what was asked; nothing was changed."""

    code = "operator_request_refused"
