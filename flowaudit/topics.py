"""The Kafka topics a worker needs, checked before it starts consuming.

On a real cluster the worker creates no topics (`topic_allow_declare=False`): a missing input
topic used to go unnoticed (Faust waits for it forever), and a missing output topic failed only at
the first forward. `check_topics` asks the cluster once at start-up and raises `TopicError` with
one line naming every missing topic, or saying the cluster could not be reached.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient


class TopicError(Exception):
    """A topic the worker needs is missing, or the cluster did not answer."""


def partition_counts(bootstrap: str, timeout: float = 15.0) -> dict[str, int]:
    """Every topic of the cluster and its number of partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"cannot reach Kafka at {bootstrap}: {exc.args[0]}") from None
    return {name: len(topic.partitions) for name, topic in metadata.topics.items() if topic.error is None}


def check_topics(bootstrap: str, names: Iterable[str], timeout: float = 15.0) -> dict[str, int]:
    """The partition count of each of `names`; TopicError naming those the cluster lacks."""
    wanted = list(dict.fromkeys(names))
    counts = partition_counts(bootstrap, timeout)
    missing = [name for name in wanted if name not in counts]
    if missing:
        raise TopicError(
            f"topics missing on the Kafka cluster at {bootstrap}: {', '.join(missing)} "
            "(create them first: the worker creates no topics on a real cluster)"
        )
    return {name: counts[name] for name in wanted}
