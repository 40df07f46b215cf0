"""What `wallet.alerts` holds: a monitor's alert (key = user id, UTF-8). A monitor is an
operator's rule over every wallet of an asset (`wallet monitors`); the writer evaluates it on
each accepted transaction, and the alert is published through the outbox with it: once per
(monitor, transaction), at least once on the wire (consumers dedupe by `alert_id`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.commands import CommandType

MonitorId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]


class MonitorKind(StrEnum):
    """What a monitor watches."""

    BALANCE_ABOVE = "balance_above"  # a wallet's balance rises to the threshold or past it
    BALANCE_BELOW = "balance_below"  # a wallet's balance falls below the threshold
    # What a wallet spends in a window (spends, captures, purchases' costs; windows are
    # aligned to the epoch: an hour's starts on the hour) goes past the threshold.
    SPEND_OVER_WINDOW = "spend_over_window"


class Alert(BaseModel):
    """One monitor's alert, raised by one accepted transaction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_id: UUID = Field(description="Derived from (monitor, transaction): the same on "
                           "every publish of it.")  # fmt: skip
    monitor_id: MonitorId
    kind: MonitorKind
    user_id: str
    asset: str
    threshold: int
    value: int = Field(description="The balance after the transaction (balance monitors: "
                       "available + held), or what the window's spends came to.")  # fmt: skip
    window_s: int | None = Field(description="spend_over_window: the window's length.")
    transaction_id: UUID
    type: CommandType = Field(description="The transaction's type.")
    at: AwareDatetime
