"""The pure decision function."""

from __future__ import annotations

import pytest

from ledger.decide import BALANCE_MAX, EMPTY_ACCOUNT, Accepted, AccountState, Rejected, decide
from schemas.events import AccountKind
from tests.integration.helpers import command

ASSETS = frozenset({"GOLD"})


class TestCredits:
    def test_top_up_opens_a_wallet_from_the_treasury(self) -> None:
        """A first top-up opens the wallet at version 1, funded by the treasury."""
        result = decide(command("top_up", "u", 30), EMPTY_ACCOUNT, ASSETS)
        assert result == Accepted(AccountState(30, 1), 30, AccountKind.TREASURY)

    def test_bonus_comes_from_the_bonus_pool(self) -> None:
        """A bonus is a credit from the bonus pool."""
        result = decide(command("bonus", "u", 5), AccountState(10, 3), ASSETS)
        assert result == Accepted(AccountState(15, 4), 5, AccountKind.BONUS_POOL)

    def test_credit_past_the_balance_limit_is_refused(self) -> None:
        """No balance may exceed BALANCE_MAX."""
        result = decide(command("top_up", "u", 10), AccountState(BALANCE_MAX - 5, 1), ASSETS)
        assert isinstance(result, Rejected) and result.code == "balance_limit_exceeded"


class TestSpends:
    def test_spend_goes_to_revenue(self) -> None:
        """A spend debits the user and credits revenue."""
        result = decide(command("spend", "u", 10), AccountState(10, 1), ASSETS)
        assert result == Accepted(AccountState(0, 2), -10, AccountKind.REVENUE)

    @pytest.mark.parametrize("balance", [0, 9])
    def test_overdraft_is_refused(self, balance: int) -> None:
        """A spend larger than the balance is insufficient_funds."""
        result = decide(command("spend", "u", 10), AccountState(balance, 1), ASSETS)
        assert isinstance(result, Rejected) and result.code == "insufficient_funds"

    def test_unknown_asset_is_refused(self) -> None:
        """An asset not in the catalog is unknown_asset."""
        result = decide(command("top_up", "u", 1, asset="RUBY"), EMPTY_ACCOUNT, ASSETS)
        assert isinstance(result, Rejected) and result.code == "unknown_asset"

    def test_negative_state_is_a_bug(self) -> None:
        """A negative balance going in trips the precondition assertion."""
        with pytest.raises(AssertionError):
            decide(command("spend", "u", 1), AccountState(-1, 1), ASSETS)
