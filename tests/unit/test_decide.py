"""The pure decision function."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import decide as decisions
from ledger import lots
from ledger.account import (
    BALANCE_MAX,
    EMPTY_ACCOUNT,
    NO_REFERENCES,
    Accepted,
    AccountState,
    Asset,
    Hold,
    Rejected,
)
from ledger.decide import decide
from ledger.lots import LOTS_OPEN_MAX, Lot, Piece, SpendOrder, at_ms
from schemas.events import AccountKind
from tests.integration.helpers import command

F = SpendOrder.FREE_FIRST
ASSETS = {"GOLD": Asset(F)}
TX = uuid.UUID(int=99)
NOW_MS = 1_800_000_000_000
PAID = Lot(uuid.UUID(int=1), True, 30, 1)
FREE = Lot(uuid.UUID(int=2), False, 5, 2)
BOTH = AccountState(35, 2, 30, (PAID, FREE))


class TestCredits:
    def test_top_up_opens_a_paid_lot_from_the_treasury(self) -> None:
        """A first top-up opens the wallet at version 1 with one paid lot, funded by the
        treasury."""
        result = decide(command("top_up", "u", 30), EMPTY_ACCOUNT, ASSETS, TX, NOW_MS)
        after = AccountState(30, 1, 30, (Lot(TX, True, 30, 1),), None, F)
        opened = Lot(TX, True, 30, 1)
        assert result == Accepted(
            after, 30, ((AccountKind.TREASURY, -30),), amount=30, opened=opened
        )

    def test_bonus_opens_a_free_lot_from_the_bonus_pool(self) -> None:
        """A bonus is a credit from the bonus pool, and its lot is free currency."""
        result = decide(
            command("bonus", "u", 5), AccountState(30, 1, 30, (PAID,)), ASSETS, TX, NOW_MS
        )
        after = AccountState(35, 2, 30, (Lot(TX, False, 5, 2), PAID), None, F)
        opened = Lot(TX, False, 5, 2)
        assert result == Accepted(
            after, 5, ((AccountKind.BONUS_POOL, -5),), amount=5, opened=opened
        )

    def test_credit_past_the_balance_limit_is_refused(self) -> None:
        """No balance may exceed BALANCE_MAX."""
        full = AccountState(BALANCE_MAX - 5, 1, 0, (Lot(TX, False, BALANCE_MAX - 5, 1),))
        result = decide(command("top_up", "u", 10), full, ASSETS, uuid.uuid4(), NOW_MS)
        assert isinstance(result, Rejected) and result.code == "balance_limit_exceeded"

    def test_credit_past_the_assets_own_limit_is_refused(self) -> None:
        """An asset's balance limit counts held money, admits a credit up to it, and refuses
        one past it on either path (quiet wallet: short path; with a hold: general path)."""
        capped = {"GOLD": Asset(F, balance_max=50)}
        quiet = AccountState(40, 1, 40, (Lot(TX, True, 40, 1),), None, F)
        held = quiet._replace(balance=30, paid=30, lots=(Lot(TX, True, 30, 1),), held=10,
                              holds=(Hold("h", TX, 10, (), NOW_MS + 60_000),))  # fmt: skip
        fits = decide(command("bonus", "u", 10), quiet, capped, uuid.uuid4(), NOW_MS)
        assert isinstance(fits, Accepted) and fits.account.balance == 50
        for account in (quiet, held):
            past = decide(command("top_up", "u", 11), account, capped, uuid.uuid4(), NOW_MS)
            assert isinstance(past, Rejected) and past.code == "balance_limit_exceeded"
            assert "50 GOLD" in past.message

    def test_credit_past_the_open_lot_limit_is_refused(self) -> None:
        """A wallet holding LOTS_OPEN_MAX open lots takes no further credit: too_many_lots."""
        lots = tuple(Lot(uuid.UUID(int=i + 1), True, 1, i + 1) for i in range(LOTS_OPEN_MAX))
        account = AccountState(LOTS_OPEN_MAX, LOTS_OPEN_MAX, LOTS_OPEN_MAX, lots)
        result = decide(command("bonus", "u", 1), account, ASSETS, TX, NOW_MS)
        assert isinstance(result, Rejected) and result.code == "too_many_lots"


class TestSpends:
    def test_spend_takes_free_currency_first(self) -> None:
        """Under free_first a spend takes the free lot, then paid; the paid part goes to
        revenue and the free part to free_spent."""
        result = decide(command("spend", "u", 8), BOTH, ASSETS, TX, NOW_MS)
        assert isinstance(result, Accepted)
        assert result.account == AccountState(27, 3, 27, (PAID._replace(remaining=27),), None, F)
        assert result.pieces == (Piece(FREE.lot_id, False, 5, 2, None, 0),
                                 Piece(PAID.lot_id, True, 3, 1, None, 27))  # fmt: skip
        assert result.consumed_paid == 3
        assert result.legs == ((AccountKind.REVENUE, 3), (AccountKind.FREE_SPENT, 5))

    def test_paid_first_recognises_revenue_first(self) -> None:
        """Under paid_first a spend within the paid lots is all revenue."""
        assets = {"GOLD": Asset(SpendOrder.PAID_FIRST)}
        result = decide(command("spend", "u", 8), BOTH, assets, TX, NOW_MS)
        assert isinstance(result, Accepted)
        assert result.legs == ((AccountKind.REVENUE, 8),) and result.account.paid == 22

    @pytest.mark.parametrize("balance", [0, 9])
    def test_overdraft_is_refused(self, balance: int) -> None:
        """A spend larger than the balance is insufficient_funds."""
        lots = (Lot(TX, True, balance, 1),) if balance else ()
        account = AccountState(balance, 1, balance, lots)
        result = decide(command("spend", "u", 10), account, ASSETS, uuid.uuid4(), NOW_MS)
        assert isinstance(result, Rejected) and result.code == "insufficient_funds"

    def test_unknown_asset_is_refused(self) -> None:
        """An asset not in the catalog is unknown_asset."""
        result = decide(command("top_up", "u", 1, asset="RUBY"), EMPTY_ACCOUNT, ASSETS, TX, NOW_MS)
        assert isinstance(result, Rejected) and result.code == "unknown_asset"

    def test_negative_state_is_a_bug(self) -> None:
        """A negative balance going in trips the precondition assertion."""
        with pytest.raises(AssertionError):
            decide(command("spend", "u", 1), AccountState(-1, 1), ASSETS, TX, NOW_MS)

    def test_lots_short_of_the_balance_are_a_bug(self) -> None:
        """A state whose lots hold less than its balance trips an assertion, never a
        partial spend."""
        with pytest.raises(AssertionError):
            decide(command("spend", "u", 10), AccountState(10, 1, 0, ()), ASSETS, TX, NOW_MS)


SOON = Lot(uuid.UUID(int=3), False, 5, 3, NOW_MS + 1)  # one millisecond to go
GONE = Lot(uuid.UUID(int=4), False, 7, 4, NOW_MS)  # expiring now: no longer spendable


_LOTS = st.lists(
    st.tuples(st.booleans(), st.integers(1, 100), st.none() | st.integers(1, 10**6)),
    max_size=6,
)


def _quiet(spec: list[tuple[bool, int, int | None]]) -> AccountState:
    """A wallet of these lots (paid?, remaining, expiry after NOW_MS), nothing held or owed."""
    opened = tuple(
        Lot(uuid.UUID(int=i + 1), paid, n, i + 1, None if ms is None else NOW_MS + ms)
        for i, (paid, n, ms) in enumerate(spec)
    )
    ordered = lots.in_order(opened, F)
    return AccountState(lots.total(opened), len(opened), lots.paid_total(opened), ordered,
                        lots.next_due_ms(opened), F)  # fmt: skip


class TestPlainPath:
    @settings(max_examples=300, deadline=None)
    @given(_LOTS, st.sampled_from(["top_up", "bonus", "spend"]), st.integers(1, 300))
    def test_plain_commands_decide_as_the_general_path(
        self, spec: list[tuple[bool, int, int | None]], kind: str, amount: int
    ) -> None:
        """A credit or spend on a quiet wallet gets, through its own short path, exactly the
        decision of the general path (legs derived from the record, postconditions)."""
        account = _quiet(spec)
        cmd = command(kind, "u", amount)
        result = decide(cmd, account, ASSETS, TX, NOW_MS)
        own = decisions._by_type(cmd, account, (TX, NOW_MS, BALANCE_MAX), NO_REFERENCES, ((), ()))
        if isinstance(own, Rejected):
            assert result == own
            return
        general = decisions._legged(kind, account, own, own.account, 0, own.debt_paid)
        assert result == general


class TestExpiry:
    def test_a_lot_expiring_now_is_not_spendable(self) -> None:
        """A lot whose expiry is now counts for nothing: a spend of the rest is refused."""
        account = AccountState(12, 4, 0, (SOON, GONE), NOW_MS)
        result = decide(command("spend", "u", 6), account, ASSETS, TX, NOW_MS)
        assert isinstance(result, Rejected) and "balance 5 " in result.message

    def test_a_transaction_books_out_what_has_expired(self) -> None:
        """An accepted command's transaction also books the expired lots out to `expired`:
        the user leg moves by the amount less what expired."""
        account = AccountState(12, 4, 0, (SOON, GONE), NOW_MS)
        result = decide(command("spend", "u", 5), account, ASSETS, TX, NOW_MS)
        assert isinstance(result, Accepted)
        assert result.user_amount == -12 and result.account == AccountState(0, 5, 0, (), None, F)
        assert result.legs == ((AccountKind.FREE_SPENT, 5), (AccountKind.EXPIRED, 7))
        assert result.expired == (Piece(GONE.lot_id, False, 7, 4, NOW_MS, 0),)

    def test_one_millisecond_before_its_expiry_a_lot_is_spent(self) -> None:
        """Up to the millisecond before its expiry a lot is spendable, and under free_first
        the one expiring soonest goes first."""
        later = Lot(uuid.UUID(int=5), False, 5, 1, NOW_MS + 60_000)
        account = AccountState(10, 3, 0, (later, SOON), NOW_MS + 1)
        result = decide(command("spend", "u", 5), account, ASSETS, TX, NOW_MS)
        assert isinstance(result, Accepted) and result.account.lots == (later,)

    def test_expire_books_out_only_what_is_due(self) -> None:
        """`expire` books out the due lots alone; with nothing due it is refused."""
        account = AccountState(12, 4, 0, (SOON, GONE), NOW_MS)
        result = decide(command("expire", "u", None), account, ASSETS, TX, NOW_MS)
        assert isinstance(result, Accepted) and result.amount == 7
        assert result.account == AccountState(5, 5, 0, (SOON,), NOW_MS + 1, F)
        assert result.legs == ((AccountKind.EXPIRED, 7),)
        again = decide(command("expire", "u", None), result.account, ASSETS, TX, NOW_MS)
        assert isinstance(again, Rejected) and again.code == "nothing_to_expire"

    def test_a_credit_already_expired_is_refused(self) -> None:
        """A credit whose expires_at has passed by the time it is decided is invalid_expiry."""
        credit = command("bonus", "u", 5).model_copy(update={"expires_at": at_ms(NOW_MS)})
        result = decide(credit, EMPTY_ACCOUNT, ASSETS, TX, NOW_MS)
        assert isinstance(result, Rejected) and result.code == "invalid_expiry"
        later = credit.model_copy(update={"expires_at": at_ms(NOW_MS + 1)})
        accepted = decide(later, EMPTY_ACCOUNT, ASSETS, TX, NOW_MS)
        assert isinstance(accepted, Accepted) and accepted.account.lots[0].expires_ms == NOW_MS + 1
