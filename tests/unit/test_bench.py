"""The bench's transfer load: built before the clock starts."""

from __future__ import annotations

from messaging.kafka import partition_for
from wallet.bench import build_transfers


class TestBuildTransfers:
    def test_every_gift_crosses_partitions_and_is_funded(self) -> None:
        """Each gift goes from one partition to another, and each user's top-up covers all
        it could ever give."""
        funds, gifts = build_transfers(500, 30, "GOLD", seed=1, reply_to="r", partitions=12)
        assert len(funds) == 30 and len(gifts) == 500
        for gift in gifts:
            assert gift.to_user_id is not None
            assert partition_for(gift.user_id, 12) != partition_for(gift.to_user_id, 12)
        given = {f.user_id: 0 for f in funds}
        for gift in gifts:
            given[gift.user_id] += gift.amount or 0
        assert all(given[f.user_id] <= (f.amount or 0) for f in funds)

    def test_one_partition_still_gives_to_another_user(self) -> None:
        """With a single partition every pair shares it; a gift still has two users."""
        _, gifts = build_transfers(50, 3, "GOLD", seed=2, reply_to="r", partitions=1)
        assert all(g.user_id != g.to_user_id for g in gifts)
