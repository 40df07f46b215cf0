"""Transfers between users: a saga of at most three steps, each decided by one partition's
writer and committed with its batch. Pure.

Two users usually live on different partitions, each with its own single writer, so a
transfer cannot be one database transaction. Instead:

1. `transfer` (the sender's partition): decided like a spend (not in debt, enough
   available), the amount taken from the sender's lots in spend order into the `transfers`
   clearing account. Its outbox sends step 2, keyed by the receiver, onto the commands topic.
2. `transfer_in` (the receiver's partition): the writer reads the transfer's record (see
   References) and credits the receiver with the very pieces the sender's lots gave, from
   `transfers` (paid stays paid, an expiry stays with its lot: the receiver's lots are those
   same lots), or refuses: no wallet, a balance limit, too many lots. Accepted, its outbox
   sends the sender's reply (completed); refused, it sends step 3, keyed by the sender.
3. `transfer_refund` (the sender's partition): the pieces go back to the sender's lots, out
   of `transfers`, and its outbox sends the sender's reply (refused, with the receiver's
   reason).

Why a clearing account and not a hold: a hold captured only after the credit would leave a
moment in which the money is held by the sender and already credited to the receiver, counted
in both wallets; and a hold's expiry could give it back while the credit is in flight. Debited
into `transfers` at once, a transfer is always in exactly one state: in flight (in
`transfers`), completed (the receiver's) or refused (back with the sender).

Why each step takes effect once: its idempotency key is the transfer's id behind a prefix
only that step may use (schemas.commands), so a step published twice by the outbox (after a
crash between publish and mark) is a duplicate. Why a step that names no such transfer is
dead-lettered, not recorded as refused: a record would take the step's key, and the real step
arriving later would then be refused as a reused key, leaving the money in `transfers`. A
step's amounts come from the transfer's record, never from the message: a forged step can
only make a real one happen, once.
"""

from __future__ import annotations

from ledger import reversals
from ledger.account import (
    BALANCE_MAX,
    Accepted,
    AccountState,
    References,
    Rejected,
    Step,
    Target,
)
from ledger.lots import LOTS_OPEN_MAX, Piece
from schemas.commands import Command, CommandType
from schemas.replies import ErrorCode

TRANSFER = CommandType.TRANSFER.value
TRANSFER_IN = CommandType.TRANSFER_IN.value
TRANSFER_REFUND = CommandType.TRANSFER_REFUND.value


def unknown(command: Command, refs: References) -> Rejected | None:
    """Why a step is not a step of a transfer as the ledger has it (transfer_not_found), or
    None. The planner asks it before anything else of the step, so that a forged step is
    dead-lettered whatever else is wrong with it (an unknown asset, say)."""
    transfer = _transfer(command, refs)
    if isinstance(transfer, Rejected):
        return transfer
    if command.type is CommandType.TRANSFER_IN:
        if transfer.counterparty != command.user_id or transfer.amount != command.amount:
            return _not_found(command, "does not send this amount to this user")
        return None
    if transfer.user_id != command.user_id:
        return _not_found(command, "was not sent by this user")
    assert command.transaction_id is not None
    credit = refs.transfers.get(command.transaction_id, {}).get(TRANSFER_IN)
    if credit is None or credit.status != "rejected":
        return _not_found(command, "was not refused by its receiver")
    return None


def receive(
    command: Command, account: AccountState, refs: References, balance_max: int
) -> Accepted | Rejected:
    """Step 2: credit the receiver with the transfer's pieces, or refuse."""
    refused = unknown(command, refs)
    if refused is not None:
        return refused
    transfer = _known(command, refs)
    if account.version == 0 and command.user_id not in refs.wallets:
        return Rejected(ErrorCode.UNKNOWN_WALLET, f"{command.user_id} has no wallet")
    if account.total() + transfer.amount > min(balance_max, BALANCE_MAX):
        return Rejected(ErrorCode.BALANCE_LIMIT_EXCEEDED,
                        f"a balance may not exceed {balance_max} {command.asset}")  # fmt: skip
    held = {lot.lot_id for lot in account.lots}
    new = {p.lot_id for p in transfer.pieces if p.lot_id not in held}
    if len(account.lots) + len(new) > LOTS_OPEN_MAX:
        return Rejected(ErrorCode.TOO_MANY_LOTS,
                        f"the wallet would hold more than {LOTS_OPEN_MAX} open lots of "
                        f"{command.asset}")  # fmt: skip
    return _given(account, transfer, command.user_id)


def refund(command: Command, account: AccountState, refs: References) -> Accepted | Rejected:
    """Step 3: the receiver's side refused; the pieces go back to the sender's lots."""
    refused = unknown(command, refs)
    if refused is not None:
        return refused
    transfer = _known(command, refs)
    if account.total() + transfer.amount > BALANCE_MAX:  # its own money: only the bound
        return Rejected(ErrorCode.BALANCE_LIMIT_EXCEEDED,
                        f"a balance may not exceed {BALANCE_MAX} {command.asset}")  # fmt: skip
    return _given(account, transfer)


def refusal(credit: Step) -> str:
    """What a refund records of the receiver's refusal (its `reason`): "code: message"."""
    assert credit.error_code is not None, credit
    return f"{credit.error_code}: {credit.error_message or ''}"


def _given(account: AccountState, transfer: Target, receiver: str | None = None) -> Accepted:
    """The transfer's pieces given to `account`'s lots: those same lots, reopened or grown.
    A receiver's (`receiver`) legacy pieces go to its own legacy lot of their kind instead:
    a lot from before lots existed is paid or free as its id says for its holder
    (reversals.target_pieces), so it must never hold another wallet's."""
    pieces = transfer.pieces
    if receiver is not None:
        pieces = tuple(_own_legacy(p, transfer, receiver) for p in pieces)
    given = reversals.give_back(account, pieces, transfer.consumed_paid)
    assert given.amount == transfer.amount, (given.amount, transfer)
    return given


def _transfer(command: Command, refs: References) -> Target | Rejected:
    """The transfer a step names, accepted, of this asset."""
    assert command.transaction_id is not None, command
    transfer = refs.targets.get(command.transaction_id)
    if transfer is None or transfer.type != TRANSFER or transfer.asset != command.asset:
        return _not_found(command, "is not an accepted transfer of this asset")
    if not transfer.pieces or transfer.counterparty is None:  # never so as recorded
        return _not_found(command, "names a transfer without its lots or receiver")
    return transfer


def _own_legacy(piece: Piece, transfer: Target, receiver: str) -> Piece:
    if piece.lot_id != reversals.legacy_lot_id(piece.paid, transfer.user_id, transfer.asset):
        return piece
    return piece._replace(lot_id=reversals.legacy_lot_id(piece.paid, receiver, transfer.asset))


def _known(command: Command, refs: References) -> Target:
    """The transfer of a step `unknown` found nothing wrong with."""
    transfer = _transfer(command, refs)
    assert not isinstance(transfer, Rejected), transfer
    return transfer


def _not_found(command: Command, why: str) -> Rejected:
    return Rejected(ErrorCode.TRANSFER_NOT_FOUND, f"{command.transaction_id} {why}")
