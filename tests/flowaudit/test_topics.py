"""Start-up topic check against the embedded broker (a real Kafka protocol endpoint)."""

from __future__ import annotations

import pytest

from flowaudit.broker import EmbeddedBroker
from flowaudit.topics import TopicError, check_topics, partition_counts
from tests.helpers import free_port

pytestmark = pytest.mark.integration


def test_present_topics_give_their_partition_counts() -> None:
    with EmbeddedBroker() as broker:
        broker.create_topics(["a.in", "a.out"], 3)
        assert check_topics(broker.bootstrap, ["a.in", "a.out", "a.in"]) == {"a.in": 3, "a.out": 3}


def test_missing_topics_are_named() -> None:
    with EmbeddedBroker() as broker:
        broker.create_topics(["b.in"], 2)
        with pytest.raises(TopicError, match=r"topics missing on the Kafka cluster .*: b\.out, b\.dlq"):
            check_topics(broker.bootstrap, ["b.in", "b.out", "b.dlq"])


def test_an_unreachable_cluster_is_one_error() -> None:
    with pytest.raises(TopicError, match=r"cannot reach Kafka at 127\.0\.0\.1"):
        check_topics(f"127.0.0.1:{free_port()}", ["x"], timeout=2)


def test_the_embedded_broker_has_the_consent_topic_with_the_flow_topics_partitions() -> None:
    """Producers key every record by user_id (contract v2 §1): with one partition count, a subject's
    consents, flows and consent-ledger entry land on the same partition number."""
    from flowaudit.common.settings import Settings
    from flowaudit.runtime import all_topics, start_embedded_broker
    from flowaudit.streams.app import ledger_changelog_topic

    settings = Settings(topic_partitions=3, metrics_port=0)
    broker = start_embedded_broker(settings)
    try:
        counts = partition_counts(broker.bootstrap)
    finally:
        broker.stop()
    wanted = [
        *settings.input_topics.values(),
        settings.consent_topic,
        ledger_changelog_topic(settings.consumer_group),
    ]
    assert set(wanted) <= set(all_topics(settings))  # what the worker checks on a real cluster
    assert {name: counts.get(name) for name in wanted} == dict.fromkeys(wanted, 3)
