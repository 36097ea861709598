"""A real Apache Kafka broker for the tests that need one: the `real_kafka` fixture (pytest plugin).

scripts/kafka-broker.sh fetches the broker's jars from Maven Central into a cache and runs one KRaft
node on 127.0.0.1; this module starts it once per test session, on free ports in a temporary
directory, and always stops it. Tests that use it carry the `kafka` marker.

When the jars cannot be fetched (no Maven, no Java, no network) the fixture skips with the reason, except
in CI (CI=true), where it fails: there a skipped broker test would hide a broken setup. A broker that
was fetched but does not start always fails.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "kafka-broker.sh"
FETCH_TIMEOUT = 900.0
START_TIMEOUT = 120.0
OFFSETS_TOPIC = "__consumer_offsets"


def _java_string_hash(text: str) -> int:
    """Java's String.hashCode (over UTF-16 code units), as a signed 32-bit int."""
    value = 0
    encoded = text.encode("utf-16-be")
    for i in range(0, len(encoded), 2):
        value = (31 * value + int.from_bytes(encoded[i : i + 2], "big")) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _group_on(partition: int, partitions: int) -> str:
    """A group id whose offsets live in that __consumer_offsets partition: Kafka places a group at
    Utils.abs(groupId.hashCode()) % partitions (Utils.abs maps Integer.MIN_VALUE to 0)."""
    for n in range(100_000):
        group = f"flowaudit-tests-probe-{n}"
        code = _java_string_hash(group)
        if (0 if code == -(1 << 31) else abs(code)) % partitions == partition:
            return group
    raise AssertionError(f"no probe group found for partition {partition} of {partitions}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _java() -> str | None:
    """The java the script will run (its JAVA, else $JAVA_HOME/bin/java, else java on PATH), if any."""
    java_home = os.environ.get("JAVA_HOME")
    return shutil.which(os.environ.get("JAVA") or (f"{java_home}/bin/java" if java_home else "java"))


def fetch_broker() -> None:
    """The script's `fetch` (a no-op when the cache is complete); skips locally, fails in CI.

    A missing Java counts as a failed fetch too: without it there is no broker to run.
    """
    if _java() is None:
        reason = "no java found (JAVA, JAVA_HOME or PATH); Kafka 4 needs Java 17+"
    else:
        try:
            result = _run(["fetch"], FETCH_TIMEOUT)
            reason = "" if result.returncode == 0 else f"exit {result.returncode}:\n{_tail(result.stderr)}"
        except (OSError, subprocess.TimeoutExpired) as error:
            reason = str(error)
    if not reason:
        return
    message = f"cannot fetch the Apache Kafka broker with {SCRIPT.name} fetch ({reason})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class RealKafka:
    """One Kafka broker (KRaft, broker and controller in one JVM) run from `directory`.

    The ports are chosen once, so that a restart keeps the broker's address as well as its log dir
    (topics, records and committed offsets).
    """

    def __init__(self, directory: Path, port: int | None = None, controller_port: int | None = None) -> None:
        self.directory = directory
        self.port = port or _free_port()
        self.controller_port = controller_port or _free_port()
        while self.controller_port == self.port:
            self.controller_port = _free_port()
        self.running = False
        self.start_seconds = 0.0  # how long the last start took, readiness checks included

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def start(self) -> RealKafka:
        started = time.monotonic()
        # Marked running before the script runs: a script killed by the timeout may leave a JVM behind,
        # and stop() must then still reach it through broker.pid.
        self.running = True
        result = _run(
            ["start", str(self.directory), str(self.port), str(self.controller_port)], START_TIMEOUT
        )
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"the Kafka broker did not start:\n{_tail(result.stderr, 60)}")
        self._wait_serving(started + START_TIMEOUT)
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (Kafka's controlled shutdown), SIGKILL after `timeout` seconds; idempotent."""
        if not self.running:
            return
        result = _run(["stop", str(self.directory), str(int(timeout))], timeout + 30)
        if result.returncode != 0:
            raise RuntimeError(f"the Kafka broker did not stop:\n{_tail(result.stderr)}")
        self.running = False

    def restart(self) -> RealKafka:
        """Stop, then start again on the same log dir and ports."""
        self.stop()
        return self.start()

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="flowaudit-tests")

    def create_topics(self, names: Iterable[str], partitions: int, timeout: float = 30) -> None:
        """Create the topics and wait until every partition has a leader (producers can send at once)."""
        wanted = list(names)
        admin = self.admin()
        try:
            admin.create_topics(
                [NewTopic(name, partitions, 1) for name in wanted], timeout_ms=int(timeout * 1000)
            )
            deadline = time.monotonic() + timeout
            while True:
                described = admin.describe_topics(wanted)
                ready = all(
                    topic["error_code"] == 0
                    and len(topic["partitions"]) == partitions
                    and all(partition["leader"] >= 0 for partition in topic["partitions"])
                    for topic in described
                )
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"topics {wanted} have no leaders after {timeout:.0f} s: {described}"
                    )
                time.sleep(0.05)
        finally:
            admin.close()
        # The metadata can name a leader a moment before that broker's replica manager serves the
        # partition (a client's first produce then gets NOT_LEADER and retries): ask the leaders for
        # the end offsets, which the client retries until every partition answers.
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, client_id="flowaudit-tests")
        try:
            consumer.end_offsets([TopicPartition(name, p) for name in wanted for p in range(partitions)])
        finally:
            consumer.close()

    def _wait_serving(self, deadline: float) -> None:
        """The script waited for the broker's own "started"; wait until it answers a metadata request
        and, after a restart, until its group coordinator has loaded every __consumer_offsets partition
        (until then a group's offsets are refused with COORDINATOR_LOAD_IN_PROGRESS).
        """
        while True:
            try:
                admin = self.admin()
                try:
                    admin.describe_cluster()
                    if OFFSETS_TOPIC in admin.list_topics():
                        (offsets,) = admin.describe_topics([OFFSETS_TOPIC])
                        for partition in range(len(offsets["partitions"])):
                            admin.list_consumer_group_offsets(
                                _group_on(partition, len(offsets["partitions"]))
                            )
                    return
                finally:
                    admin.close()
            except KafkaError as error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the Kafka broker at {self.bootstrap} does not serve: {error!r}"
                    ) from error
                time.sleep(0.1)


@pytest.fixture(scope="session")
def real_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealKafka]:
    """A real Kafka broker on 127.0.0.1 for the whole session, stopped at its end, also on failure.

    Tests that restart it (`real_kafka.restart()`) leave it running; a test that stops it must start it
    again before it returns.
    """
    fetch_broker()
    broker = RealKafka(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


_TOPIC_SUFFIX = itertools.count()


def own_topics(
    broker: RealKafka, partitions: int = 4, consent_partitions: int | None = None
) -> dict[str, str]:
    """Topics (the consent topic and the consent ledger's changelog included) and a consumer group for
    one test, created on the broker; the worker settings for them. `consent_partitions`: a consent
    topic partitioned unlike the others (the worker must refuse it)."""
    from flowaudit.streams.app import ledger_changelog_topic

    suffix = f"t{os.getpid()}-{next(_TOPIC_SUFFIX)}"
    names = {
        "FLOWAUDIT_TOPIC_DEVICE_SYNC": f"flowaudit.device-sync.{suffix}",
        "FLOWAUDIT_TOPIC_SHARING": f"flowaudit.sharing.{suffix}",
        "FLOWAUDIT_TOPIC_SUBCONTRACTOR_TRANSFER": f"flowaudit.subcontractor-transfer.{suffix}",
        "FLOWAUDIT_TOPIC_APPROVED": f"flowaudit.approved.{suffix}",
        "FLOWAUDIT_TOPIC_BLOCKED": f"flowaudit.blocked.{suffix}",
        "FLOWAUDIT_TOPIC_DEAD_LETTER": f"flowaudit.dead-letter.{suffix}",
        "FLOWAUDIT_TOPIC_CHECKPOINTS": f"flowaudit.checkpoints.{suffix}",
    }
    group = f"flowaudit-{suffix}"
    broker.create_topics([*names.values(), ledger_changelog_topic(group)], partitions)
    consent = f"flowaudit.consents.{suffix}"
    broker.create_topics([consent], consent_partitions or partitions)
    return {**names, "FLOWAUDIT_TOPIC_CONSENT": consent, "FLOWAUDIT_CONSUMER_GROUP": group}
