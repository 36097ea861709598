"""Publishing to the gate's topics and the dead-letter topic with aiokafka's batch API.

One `send_batch` per partition and batch instead of a future per message keeps forwarding cheap;
`publish` returns only when the broker has acknowledged every record (acks=all), so the caller can
acknowledge its input afterwards.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from flowaudit.streams.messages import OutboundRecord


class KafkaPublisher:
    def __init__(self, bootstrap: str, client_id: str = "flowaudit-gate", linger_ms: int = 5) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._lock: asyncio.Lock | None = None
        self._partitions: dict[str, int] = {}

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the publisher is not started")
        return self._producer

    async def start(self) -> None:
        """Create and start the producer (inside the running loop, as aiokafka requires)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id=self.client_id,
                    acks="all",
                    linger_ms=self.linger_ms,
                    max_batch_size=1 << 20,
                    max_request_size=8 << 20,
                )
                await producer.start()
                self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            partitions = await self.producer.partitions_for(topic)
            if not partitions:
                raise RuntimeError(f"topic {topic!r} does not exist on the broker")
            count = self._partitions[topic] = len(partitions)
        return count

    async def publish(self, topic: str, records: Sequence[OutboundRecord]) -> None:
        if not records:
            return
        if self._producer is None:
            await self.start()
        count = await self._partition_count(topic)
        by_partition: dict[int, list[OutboundRecord]] = defaultdict(list)
        for record in records:
            by_partition[record.partition_hint % count].append(record)
        deliveries = []
        producer = self.producer
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for record in items:
                if (
                    batch.append(key=record.key, value=record.value, timestamp=None, headers=record.headers)
                    is None
                ):
                    deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if (
                        batch.append(
                            key=record.key, value=record.value, timestamp=None, headers=record.headers
                        )
                        is None
                    ):
                        raise ValueError(f"a record for {topic} is larger than the producer's batch size")
            if batch.record_count():
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*deliveries)
