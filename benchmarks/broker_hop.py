"""Latency of one hop through the broker alone: produce a record, consume it, at a paced rate.

The reply latency of the wallet is two such hops (command in, reply out) plus the processor's
step. This measures the hop with nothing of the wallet in it, so the two can be told apart.
Records go one per record batch, as a lone command does. Usage, with `make up` running:
    .venv/bin/python benchmarks/broker_hop.py --rate 2000 --records 10000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import time
import uuid

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from foundation.settings import load_settings
from messaging.kafka import (
    RecordBatches,
    make_consumer,
    make_producer,
    security_options,
    wait_for_topics,
)


async def hop(rate: float, records: int) -> list[float]:
    settings = load_settings()
    topic = f"bench.hop.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **security_options(settings)
    )
    await admin.start()
    await admin.create_topics([NewTopic(topic, settings.partitions, 1)])
    await wait_for_topics(settings, [topic])  # Kafka: every partition led before the first fetch
    producer, consumer = make_producer(settings), make_consumer(settings, group_id=None)
    await producer.start()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await producer.partitions_for(topic)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        receiver = asyncio.create_task(_receive(consumer, records))
        counts: dict[str, int] = {}
        start = time.perf_counter()
        for i in range(records):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            batches = RecordBatches(producer, counts)
            await batches.add(topic, f"k{i}".encode(), struct.pack(">d", time.perf_counter()))
            await batches.send()
        return await asyncio.wait_for(receiver, 60)
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()


async def _receive(consumer, records: int) -> list[float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    while len(latencies) < records:
        fetched = await consumer.getmany(timeout_ms=200)
        now = time.perf_counter()
        for batch in fetched.values():
            latencies += [(now - struct.unpack(">d", r.value)[0]) * 1000 for r in batch]
    return sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--records", type=int, default=10_000)
    args = parser.parse_args()
    ms = asyncio.run(hop(args.rate, args.records))
    print(f"broker hop at {args.rate:,.0f} records/s: p50 {statistics.median(ms):.1f} ms,"
          f" p99 {ms[int(len(ms) * 0.99)]:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
