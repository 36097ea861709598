"""The one settings object, read from the environment (`FLOWAUDIT_*`) once; flags may override.

`load_settings()` is how programs get it: a bad value raises `SettingsError`, whose message is one
line naming the variable, its (masked) value and what it accepts, for the program to print before
it exits with status 2. URLs may carry credentials: `Settings.masked()` is what logs and
`flowaudit config` print.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowaudit.common.redact import mask_url
from flowaudit.policy import DEFAULT_POLICY_DIR

ENV_PREFIX = "FLOWAUDIT_"
# Kafka's legal topic and group characters (kafka.common.internals.Topic), at most 249 of them
_KAFKA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*$")
_SECRET_FIELDS = frozenset({"chain_key", "web_token", "checkpoint_key"})
_URL_FIELDS = frozenset({"kafka_url", "clickhouse_url", "clickhouse_reader_url"})
# `json_schema_extra` key marking a field `topic_<kind>` as the input topic of event kind <kind>
_INPUT_TOPIC = "flowaudit_input_topic"


class SettingsError(ValueError):
    """A setting has a value the program cannot run with; the message is one line naming it."""


def _is_host(value: str) -> bool:
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOST_NAME.match(value))
    return True


def _servers(text: str) -> list[tuple[str, int]]:
    """`h1:9092,h2:9092` -> [(h1, 9092), (h2, 9092)]; ValueError naming the first bad server."""
    servers = []
    for server in text.split(","):
        host, colon, port = server.strip().rpartition(":")
        if not colon or not _is_host(host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{server.strip() or 'an empty entry'!r} is not host:port")
        servers.append((host, int(port)))
    return servers


def _input_topic(default: str) -> Any:
    """Declares a field `topic_<kind>`: the topic event kind <kind> is consumed from (`input_topics`)."""
    return Field(default=default, json_schema_extra={_INPUT_TOPIC: True})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False)

    kafka_url: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (kafka://host:9092,...); unset starts an embedded broker",
    )
    clickhouse_url: str | None = Field(
        default=None,
        description="chdb:///path or http(s)://user:pass@host:8123/db; default chdb://<data dir>/audit",
    )
    clickhouse_reader_url: str | None = Field(
        default=None,
        description="http(s)://reader:pass@host:8123/db: the reader role the web API's reports and "
        "verify use with a ClickHouse server (unset: the web API serves none; chDB has no roles)",
    )
    data_dir: Path = Field(default=Path(".flowaudit"), description="where embedded state lives")
    policy_dir: Path = Field(default=DEFAULT_POLICY_DIR, description="policy data directory")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="Prometheus metrics port (0 = off)")

    # one per event kind (flowaudit.domain.kinds), env FLOWAUDIT_TOPIC_<KIND>
    topic_device_sync: str = _input_topic("flowaudit.device-sync")
    topic_sharing: str = _input_topic("flowaudit.sharing")
    topic_subcontractor_transfer: str = _input_topic("flowaudit.subcontractor-transfer")
    # the consent kind's (contract v2 §1, §6): an input topic, but not a flow kind's, so not marked
    # `_input_topic()` (`input_topics` lists the flow kinds); `consent_topic` names it
    topic_consent: str = Field(
        default="flowaudit.consents",
        description="topic of the consent events (grants and withdrawals) the consent ledger is built from",
    )
    topic_approved: str = "flowaudit.approved"
    topic_blocked: str = "flowaudit.blocked"
    topic_dead_letter: str = "flowaudit.dead-letter"
    topic_checkpoints: str = Field(
        default="flowaudit.checkpoints",
        description="topic the worker publishes every signed checkpoint to (the witness reads it)",
    )
    topic_witnessed: str = Field(
        default="flowaudit.checkpoints.witnessed",
        description="topic the witness publishes the checkpoints it cosigned to",
    )
    topic_partitions: int = Field(
        default=4, ge=1, le=10_000, description="partitions of topics the embedded broker creates"
    )
    consumer_group: str = "flowaudit-worker"

    batch_max_rows: int = Field(
        default=20_000, ge=1, le=1_000_000, description="audit rows per insert, at most"
    )
    # 0.25 s measured best in bench/stream.py (ratio to a no-op agent, 120,000 events) with the whole
    # pipeline in one process: 1.0 s gave 0.47-0.66 (median 0.54), 0.25 s 0.57-0.80 (median 0.67),
    # 0.1 s 0.57-0.60. Shorter bursts of Python work leave the GIL to Faust's consumer thread more
    # often; below that, inserts get small.
    batch_max_seconds: float = Field(
        default=0.25, gt=0, le=60, description="longest wait before a partial batch is written"
    )
    # Off by default: in bench/stream.py --consents a 1 s wait cut the consent store calls by ~4x
    # (75 batches in 18 calls) and the CPU per event a little, but not the run's wall time (pairs:
    # 0.633, 0.666 with the wait against 0.716, 0.640 without; with an early write when the flows
    # pause, 0.602, 0.544). The ledger is applied when a batch is read, not when it is written, so a
    # wait delays only the consents' commit and their notices (sinks/writer.py, ClickHouseSink).
    consent_write_delay_seconds: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="longest a consent batch waits to be written with the next ones (0: at once)",
    )
    commit_interval_seconds: float = Field(
        default=1.0, gt=0, le=3600, description="how often Faust commits acknowledged offsets"
    )
    session_timeout_seconds: float = Field(
        default=30.0,
        ge=6,
        le=1800,  # the broker's default group.max.session.timeout.ms is 30 minutes
        description="Kafka consumer-group session timeout: how soon a dead worker's partitions move",
    )
    insert_retry_max_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="cap of the insert retry back-off"
    )
    invalid_ratio_limit: float = Field(
        default=0.5, gt=0, le=1, description="stop when more than this share of a window is invalid"
    )
    invalid_ratio_window: int = Field(
        default=1000, ge=10, le=100_000_000, description="records per invalid-ratio window"
    )
    pipeline_process: bool = Field(
        default=True,
        description="decode, decide and write the audit store in a second process (off: all in one process)",
    )

    web_port: int = Field(
        default=6066, ge=0, le=65535, description="worker's web port (reports while it runs)"
    )
    web_bind: str = Field(default="127.0.0.1", description="address the worker's web server binds to")
    web_allowed_hosts: str = Field(
        default="",
        description="host names the web API answers to besides its address and localhost (a, b)",
    )
    metrics_bind: str = Field(default="127.0.0.1", description="address the metrics endpoint binds to")
    chain_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of the audit chain (16 characters or more); unset: <data dir>/chain.key",
    )
    web_token: SecretStr | None = Field(
        default=None,
        description="bearer token the worker's web API requires for reports and verify (16+ characters)",
    )
    checkpoint_key: SecretStr | None = Field(
        default=None,
        description="Ed25519 signer key of the Merkle log's checkpoints (PRIVATE+KEY+...); "
        "unset: <data dir>/log.key",
    )
    log_name: str = Field(
        default="flowaudit",
        description="name of the Merkle log: each chain's checkpoints have the origin "
        "<log name>/<topic>/<partition>",
    )
    witness_state: Path | None = Field(
        default=None,
        description="a witness's state file (flowaudit witness --state): receipts prove against "
        "its checkpoints",
    )

    @field_validator(
        "kafka_url",
        "clickhouse_url",
        "clickhouse_reader_url",
        "chain_key",
        "web_token",
        "checkpoint_key",
        "witness_state",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return value or None

    @field_validator("chain_key", "web_token")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("a secret of at least 16 characters is required")
        return value

    @field_validator("checkpoint_key")
    @classmethod
    def _signer_key(cls, value: SecretStr | None) -> SecretStr | None:
        # its Ed25519 content is checked when the key is loaded (sinks/merkle_log.py)
        if value is not None and not value.get_secret_value().startswith("PRIVATE+KEY+"):
            raise ValueError(
                "must be a signer key PRIVATE+KEY+<name>+<key id>+<key> (as in <data dir>/log.key)"
            )
        return value

    @field_validator("kafka_url")
    @classmethod
    def _kafka_url(cls, value: str | None) -> str | None:
        if value is not None:
            scheme, sep, rest = value.partition("://")
            if sep and scheme != "kafka":
                raise ValueError("must be kafka://host:port[,host:port...] (or host:port,...)")
            if "@" in value:
                raise ValueError("credentials in the URL are not supported (SASL is not configured here)")
            _servers((rest if sep else value).rstrip("/"))
        return value

    @field_validator("clickhouse_url", "clickhouse_reader_url")
    @classmethod
    def _clickhouse_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme, sep, rest = value.partition("://")
        if scheme == "chdb" and sep and rest.strip("/"):
            return value
        host = rest.split("/", 1)[0].rpartition("@")[2]
        if scheme in ("http", "https") and sep and host:
            _servers(host if ":" in host.lstrip("[").rpartition("]")[2] else f"{host}:8123")
            return value
        raise ValueError("must be chdb:///path or http(s)://[user:password@]host[:port][/database]")

    @field_validator(
        "topic_device_sync",
        "topic_sharing",
        "topic_subcontractor_transfer",
        "topic_consent",
        "topic_approved",
        "topic_blocked",
        "topic_dead_letter",
        "topic_checkpoints",
        "topic_witnessed",
        "consumer_group",
    )
    @classmethod
    def _kafka_name(cls, value: str) -> str:
        if not _KAFKA_NAME.match(value):
            raise ValueError("must be 1-249 characters of letters, digits, '.', '_' and '-'")
        return value

    @field_validator("log_name")
    @classmethod
    def _log_name(cls, value: str) -> str:
        if (
            not value
            or len(value) > 200
            or any(c.isspace() or c == "+" for c in value)
            or not value.isprintable()
        ):
            raise ValueError("must be a name without spaces or '+' (a signed note's key name)")
        return value

    @field_validator("web_bind", "metrics_bind")
    @classmethod
    def _bind_address(cls, value: str) -> str:
        if not _is_host(value):
            raise ValueError("must be an IP address or a host name")
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir(cls, value: Any) -> Any:
        if str(value).strip() == "":
            raise ValueError("must name a directory")
        if Path(value).exists() and not Path(value).is_dir():
            raise ValueError("exists and is not a directory")
        return value

    @field_validator("web_allowed_hosts")
    @classmethod
    def _host_names(cls, value: str) -> str:
        for name in filter(None, (part.strip() for part in value.split(","))):
            if not _is_host(name):
                raise ValueError(f"{name!r} is not a host name")
        return value

    @field_validator("witness_state")
    @classmethod
    def _state_file(cls, value: Path | None) -> Path | None:
        if value is not None and value.is_dir():
            raise ValueError("is a directory, not a witness's state file")
        return value

    @field_validator("policy_dir")
    @classmethod
    def _existing_directory(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError("no such directory")
        return value

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
    def consent_topic(self) -> str:
        """The topic the consent events are consumed from (FLOWAUDIT_TOPIC_CONSENT).

        Apart from `input_topics`, which holds the flow kinds only (a processor per kind decides
        them). Producers key its records by `user_id`, like the flow topics' (contract v2 §1), and the
        topic has their partition count, so a subject's consents and flows share a partition number.
        """
        return self.topic_consent

    @property
    def chain_key_value(self) -> str | None:
        return self.chain_key.get_secret_value() if self.chain_key else None

    @property
    def checkpoint_key_value(self) -> str | None:
        return self.checkpoint_key.get_secret_value() if self.checkpoint_key else None

    @property
    def resolved_clickhouse_url(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.data_dir / 'audit').resolve()}"

    @property
    def web_token_value(self) -> str | None:
        return self.web_token.get_secret_value() if self.web_token else None

    def masked(self) -> dict[str, Any]:
        values = self.model_dump()
        values["kafka_url"] = mask_url(self.kafka_url)
        values["clickhouse_url"] = mask_url(self.resolved_clickhouse_url)
        values["clickhouse_reader_url"] = mask_url(self.clickhouse_reader_url)
        for name in _SECRET_FIELDS:
            values[name] = "***" if getattr(self, name) else None
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


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _shown(field: str, value: Any) -> str:
    """A rejected value as the error line shows it: secrets never, URLs masked."""
    if field in _SECRET_FIELDS:
        return "***"
    text = str(value)
    return mask_url(text) or "" if field in _URL_FIELDS else text


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment (and `overrides`); SettingsError naming the first bad one."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        value = os.environ.get(env_name(field), error.get("input"))
        reason = str(error["msg"]).removeprefix("Value error, ")
        description = Settings.model_fields[field].description if field in Settings.model_fields else None
        hint = f" ({description})" if description else ""
        raise SettingsError(f"{env_name(field)}={_shown(field, value)!r}: {reason}{hint}") from None
