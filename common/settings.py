"""The one settings object, read from the environment (`FLOWAUDIT_*`) once; flags may override.

URLs may carry credentials: `Settings.masked()` is what logs and `flowaudit config` print.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowaudit.policy import DEFAULT_POLICY_DIR

# `json_schema_extra` key marking a field `topic_<kind>` as the input topic of event kind <kind>
_INPUT_TOPIC = "flowaudit_input_topic"

_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@]+:)(?P<secret>[^@]*)(?P<tail>@)", re.I)


def mask_url(url: str | None) -> str | None:
    """Replace the password of a URL with `***`."""
    if url is None:
        return None
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", url)


def _input_topic(default: str) -> Any:
    """Declares a field `topic_<kind>`: the topic event kind <kind> is consumed from (`input_topics`)."""
    return Field(default=default, json_schema_extra={_INPUT_TOPIC: True})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWAUDIT_", extra="ignore", frozen=True)

    kafka_url: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (kafka://host:9092,...); unset starts an embedded broker",
    )
    clickhouse_url: str | None = Field(
        default=None,
        description="chdb:///path or http(s)://user:pass@host:8123/db; default chdb://<data dir>/audit",
    )
    data_dir: Path = Field(default=Path(".flowaudit"), description="where embedded state lives")
    policy_dir: Path = Field(default=DEFAULT_POLICY_DIR, description="policy data directory")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="Prometheus metrics port (0 = off)")

    # one per event kind (flowaudit.domain.kinds), env FLOWAUDIT_TOPIC_<KIND>
    topic_device_sync: str = _input_topic("flowaudit.device-sync")
    topic_sharing: str = _input_topic("flowaudit.sharing")
    topic_subcontractor_transfer: str = _input_topic("flowaudit.subcontractor-transfer")
    topic_approved: str = "flowaudit.approved"
    topic_blocked: str = "flowaudit.blocked"
    topic_dead_letter: str = "flowaudit.dead-letter"
    topic_partitions: int = Field(
        default=4, ge=1, description="partitions of topics the embedded broker creates"
    )
    consumer_group: str = "flowaudit-worker"

    batch_max_rows: int = Field(default=20_000, ge=1, description="audit rows per insert, at most")
    # 0.25 s measured best in bench/stream.py (ratio to a no-op agent, 120,000 events) with the whole
    # pipeline in one process: 1.0 s gave 0.47-0.66 (median 0.54), 0.25 s 0.57-0.80 (median 0.67),
    # 0.1 s 0.57-0.60. Shorter bursts of Python work leave the GIL to Faust's consumer thread more
    # often; below that, inserts get small.
    batch_max_seconds: float = Field(
        default=0.25, gt=0, description="longest wait before a partial batch is written"
    )
    commit_interval_seconds: float = Field(
        default=1.0, gt=0, description="how often Faust commits acknowledged offsets"
    )
    session_timeout_seconds: float = Field(
        default=30.0,
        ge=6,
        description="Kafka consumer-group session timeout: how soon a dead worker's partitions move",
    )
    insert_retry_max_seconds: float = Field(
        default=30.0, gt=0, description="cap of the insert retry back-off"
    )
    invalid_ratio_limit: float = Field(
        default=0.5, gt=0, le=1, description="stop when more than this share of a window is invalid"
    )
    invalid_ratio_window: int = Field(default=1000, ge=10, description="records per invalid-ratio window")
    pipeline_process: bool = Field(
        default=True,
        description="decode, decide and write the audit store in a second process (off: all in one process)",
    )

    web_port: int = Field(
        default=6066, ge=0, le=65535, description="worker's web port (reports while it runs)"
    )
    web_bind: str = Field(default="127.0.0.1", description="address the worker's web server binds to")
    metrics_bind: str = Field(default="127.0.0.1", description="address the metrics endpoint binds to")
    chain_key: SecretStr | None = Field(
        default=None, description="HMAC key of the audit chain; unset: a key kept in <data dir>/chain.key"
    )

    @field_validator("kafka_url", "clickhouse_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @property
    def input_topics(self) -> dict[str, str]:
        """Event kind -> the topic it is consumed from, in the order the fields are declared.

        Derived from the fields declared with `_input_topic()`: field `topic_<kind>` is the topic of
        <kind>. Settings sit below the domain, so they cannot import the kinds table
        (`flowaudit.domain.kinds`); the explicit per-kind fields stay (each is an environment variable
        and a `flowaudit config` line), and this property reads the kinds off them rather than
        repeating the list. tests/common/test_settings.py holds the two lists together: the keys here
        are `KIND_NAMES`, in order, and `Kind.topic_setting` names each field.
        """
        return {name.removeprefix("topic_"): getattr(self, name) for name in _INPUT_TOPIC_FIELDS}

    @property
    def chain_key_value(self) -> str | None:
        return self.chain_key.get_secret_value() if self.chain_key else None

    @property
    def resolved_clickhouse_url(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.data_dir / 'audit').resolve()}"

    def masked(self) -> dict[str, Any]:
        values = self.model_dump()
        values["kafka_url"] = mask_url(self.kafka_url)
        values["clickhouse_url"] = mask_url(self.resolved_clickhouse_url)
        values["chain_key"] = "***" if self.chain_key else None
        return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}

    def __repr__(self) -> str:
        return f"Settings({self.masked()!r})"

    __str__ = __repr__


def _input_topic_fields() -> tuple[str, ...]:
    fields = []
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get(_INPUT_TOPIC):
            if not name.startswith("topic_"):
                raise TypeError(f"Settings.{name}: an input topic field is named topic_<kind>")
            fields.append(name)
    return tuple(fields)


_INPUT_TOPIC_FIELDS = _input_topic_fields()


def kafka_bootstrap(url: str) -> str:
    """`kafka://h1:9092,h2:9092` (or a bare `h1:9092,...`) -> `h1:9092,h2:9092`."""
    servers = url.split("://", 1)[1] if "://" in url else url
    return servers.rstrip("/")
