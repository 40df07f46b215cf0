"""Follows the ledger events topic into a BalanceCache (see projections.balance_cache), and
reads a user's accounts from the ledger when the cache does not hold them.

Each API process follows every partition of the events topic from its end, outside any
consumer group (it keeps no offsets: a restart starts empty and refills from the ledger).
Only the events of cached users are decoded; the record key is the user id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from foundation.errors import BrokerUnavailableError
from foundation.settings import Settings
from messaging.kafka import make_consumer, topic_partitions
from projections.balance_cache import Accounts, BalanceCache, Holding, balances_of
from projections.queries import ledger_accounts

log = structlog.get_logger("wallet.balance_cache")
EVENTS_PER_POLL_MAX = 10_000
POLL_TIMEOUT_MS = 200
FAILURE_BACKOFF_S = 0.5
TRUST_POLL_S = 0.01
IDLE_FETCH_MS = 500  # well below WALLET_API_BALANCE_CACHE_TRUST_MS (1,000 at least)


class EventsFollower:
    """The cache and the consumer that keeps it current."""

    def __init__(self, settings: Settings) -> None:
        self.cache = BalanceCache(settings.api_balance_cache_max)
        self._settings = settings
        self._timeout_s = settings.kafka_timeout_ms / 1000
        # Older than this, the last answer from the broker about every partition no longer
        # vouches for the cache: the broker answers an idle fetch after fetch_max_wait_ms.
        self._trust_ms = settings.api_balance_cache_trust_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = self._settings.events_topic
        found = await topic_partitions(self._settings, [topic])
        self._partitions = [TopicPartition(topic, p) for p in found.get(topic, [])]
        if not self._partitions:
            raise BrokerUnavailableError("the events topic has no partitions", topic=topic)
        # A fetch returns as soon as an event arrives; the wait only spaces idle fetches.
        # Never skip silently: an offset gone from the log (retention, a truncated log) is an
        # error here, and the cache is emptied before following on from the end.
        consumer = make_consumer(self._settings, group_id=None, fetch_max_wait_ms=IDLE_FETCH_MS,
                                 auto_offset_reset="none")  # fmt: skip
        await asyncio.wait_for(consumer.start(), self._timeout_s)
        self._consumer = consumer
        consumer.assign(self._partitions)
        await asyncio.wait_for(consumer.seek_to_end(*self._partitions), self._timeout_s)
        for tp in self._partitions:  # resolve now: a lazy position could skip what follows
            await asyncio.wait_for(consumer.position(tp), self._timeout_s)
        self._task = asyncio.create_task(self._follow(), name="balance-cache")
        # Serve from the cache from the first request: wait (bounded; the API starts anyway,
        # reading the projection meanwhile) for the broker's first answers.
        for _ in range(int(self._timeout_s / TRUST_POLL_S)):
            if self.trusted():
                break
            await asyncio.sleep(TRUST_POLL_S)

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None  # vouches for nothing from here on
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if consumer is not None:
            await consumer.stop()

    def trusted(self) -> bool:
        """Whether the follower is following, and the broker answered its fetches of every
        partition lately."""
        if self._consumer is None or self._task is None or self._task.done():
            return False
        now_ms = time.time() * 1000  # the fetcher stamps each fetch response in wall time
        for tp in self._partitions:
            answered_ms = self._consumer.last_poll_timestamp(tp)  # None before the first
            if answered_ms is None or now_ms - answered_ms > self._trust_ms:
                return False
        return True

    async def balances(self, pool: asyncpg.Pool, user_id: str) -> dict[str, Holding] | None:
        """The user's balances from the cache, read into it from the ledger on a miss; None
        when the cache cannot vouch for them (the caller reads the projection)."""
        accounts = await self.accounts(pool, user_id)
        return None if accounts is None else balances_of(accounts)

    async def accounts(self, pool: asyncpg.Pool, user_id: str) -> Accounts | None:
        """As `balances`, with each account's version."""
        if not self.trusted():
            self.cache.clear()
            return None
        found = self.cache.accounts(user_id)
        if found is not None:
            return found
        held = self.cache.reading(user_id)
        accounts: Accounts | None = None
        try:
            async with pool.acquire() as conn:
                accounts = await ledger_accounts(conn, user_id)
        finally:
            # The consumer may have stopped while the read ran: keep nothing then.
            self.cache.loaded(user_id, held, accounts if self.trusted() else None)
        return accounts

    async def _follow(self) -> None:
        while self._consumer is not None:
            try:
                batch = await self._consumer.getmany(
                    timeout_ms=POLL_TIMEOUT_MS, max_records=EVENTS_PER_POLL_MAX
                )
            except OffsetOutOfRangeError:
                log.warning("ledger events were lost to the follower; the cache starts over")
                self.cache.clear()
                try:
                    await self._consumer.seek_to_end(*self._partitions)
                except KafkaError:  # the next poll says so again, after a pause
                    await asyncio.sleep(FAILURE_BACKOFF_S)
                continue
            except KafkaError as exc:
                log.warning("following the events failed; retrying", error=repr(exc))
                await asyncio.sleep(FAILURE_BACKOFF_S)
                continue
            for records in batch.values():
                for record in records:
                    self._apply(record.key, record.value)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        user_id = key.decode("utf-8", "replace") if key is not None else ""
        if not self.cache.wants(user_id):
            return
        try:
            event = orjson.loads(value or b"")
            asset, balance, version = event["asset"], event["balance_after"], event["version"]
            paid, held, debt = event.get("paid_after"), event["held_after"], event["debt_after"]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            asset = balance = version = paid = held = debt = None
        if (isinstance(asset, str) and _count(balance, 0) and _count(version, 1)
                and _count(paid, 0) and paid <= balance and _count(held, 0)
                and _count(debt, 0)):  # fmt: skip
            self.cache.apply(user_id, asset, (balance, version, paid, held, debt))
            return
        # Not a ledger event (the topic is the wallet's own; something else wrote to it), or
        # one republished from before lots (its paid part unknown): this user's cached
        # accounts can no longer be vouched for.
        log.warning("ledger event without a usable state; the user's cached balances dropped")
        self.cache.forget(user_id)


def _count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
