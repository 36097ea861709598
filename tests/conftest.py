"""Shared fixtures. Unit tests need no broker or database; integration tests carry the marker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.policy import Policy, load_policy, load_yaml
from flowaudit.policy import DEFAULT_POLICY_DIR

pytest_plugins = ["tests.kafka_broker"]  # the real_kafka fixture (a real Apache Kafka broker)

DATA_DIR = Path(__file__).resolve().parent / "data"


def read_data(name: str) -> Any:
    return load_yaml((DATA_DIR / name).read_bytes())


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy(DEFAULT_POLICY_DIR)


@pytest.fixture(scope="session")
def contract() -> dict[str, Any]:
    data: dict[str, Any] = read_data("contract.yaml")
    return data


_CHDB_PATH: Path | None = None
_DB_COUNTER = [0]


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chDB allows one store path per process, for the life of the process: tests share it."""
    global _CHDB_PATH
    if _CHDB_PATH is None:
        _CHDB_PATH = tmp_path_factory.mktemp("chdb") / "store"
    return _CHDB_PATH


@pytest.fixture
def store_factory(chdb_path: Path, policy: Policy) -> Any:
    """Open AuditStores on a fresh database of the shared chDB store; closes them afterwards."""
    from flowaudit.sinks.clickhouse import AuditStore

    _DB_COUNTER[0] += 1
    database = f"t{_DB_COUNTER[0]}"
    opened: list[AuditStore] = []

    def make(
        key: bytes = b"test-key" * 4, use_policy: Policy | None = None, log_signer: Any = None
    ) -> AuditStore:
        store = AuditStore(
            f"chdb://{chdb_path}", use_policy or policy, key, database=database, log_signer=log_signer
        )
        store.connect()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture(scope="session")
def clickhouse_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A chDB store served over ClickHouse's HTTP interface by another process (tests/clickhouse_http.py),
    on a free port of 127.0.0.1: the base URL (add `/<database>`). Stopped at the end of the session."""
    from tests.clickhouse_http import ClickHouseHTTPServer

    server = ClickHouseHTTPServer(tmp_path_factory.mktemp("clickhouse-http") / "store")
    try:
        yield server.start()
    finally:
        server.stop()
