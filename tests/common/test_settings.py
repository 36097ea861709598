"""Settings: every variable with a bad value stops the program with one line naming it (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from flowaudit import cli
from flowaudit.common.settings import Settings, SettingsError, env_name, load_settings
from flowaudit.domain.kinds import INPUT_KINDS, KIND_NAMES, KINDS
from tests.helpers import REPO

# One value per setting that the program cannot run with. Every setting must have one (checked).
BAD_VALUES: dict[str, str] = {
    "kafka_url": "::not a url::",
    "clickhouse_url": "mysql://host/db",
    "clickhouse_reader_url": "http://",
    "data_dir": "",
    "policy_dir": "/no/such/policy/dir",
    "metrics_port": "65536",
    "topic_device_sync": "has spaces",
    "topic_sharing": "",
    "topic_subcontractor_transfer": "x" * 250,
    "topic_consent": "consents?",
    "topic_approved": "a/b",
    "topic_blocked": "ünïcode",
    "topic_dead_letter": "a,b",
    "topic_partitions": "0",
    "consumer_group": "",
    "batch_max_rows": "-1",
    "batch_max_seconds": "inf",
    "commit_interval_seconds": "nan",
    "consent_write_delay_seconds": "-1",
    "session_timeout_seconds": "1",
    "insert_retry_max_seconds": "0",
    "invalid_ratio_limit": "1.5",
    "invalid_ratio_window": "five",
    "pipeline_process": "maybe",
    "web_port": "http",
    "web_bind": "not an address!",
    "web_allowed_hosts": "good.example, bad host!",
    "metrics_bind": "",
    "chain_key": "short",
    "web_token": "short",
    "checkpoint_key": "not-a-signer-key",
    "log_name": "has space",
    "topic_checkpoints": "a b",
    "topic_witnessed": "",
    "witness_state": "/",
}


def test_every_setting_has_a_bad_value_here() -> None:
    assert set(BAD_VALUES) == set(Settings.model_fields)


@pytest.mark.parametrize("field", sorted(BAD_VALUES))
def test_a_bad_value_stops_with_one_line_naming_the_variable(
    field: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    monkeypatch.setenv(env_name(field), BAD_VALUES[field])
    assert cli.main(["config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"flowaudit: invalid setting {env_name(field)}=")
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("field", ["chain_key", "web_token"])
def test_a_rejected_secret_is_not_echoed(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name(field), "tiny-secret")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "tiny-secret" not in str(caught.value)
    assert "***" in str(caught.value)


def test_a_rejected_url_is_shown_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWAUDIT_CLICKHOUSE_URL", "ftp://writer:hunter2hunter2@host/db")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kafka_url", "kafka://broker-1:9092,broker-2:9092"),
        ("kafka_url", "127.0.0.1:9092"),
        ("kafka_url", "kafka://[::1]:9092"),
        ("clickhouse_url", "chdb:///var/lib/flowaudit/audit"),
        ("clickhouse_url", "https://writer:secret@clickhouse:8443/flowaudit"),
        ("clickhouse_url", "http://clickhouse/flowaudit"),
        ("web_bind", "0.0.0.0"),
        ("metrics_bind", "::"),
        ("metrics_bind", "localhost"),
        ("chain_key", "x" * 16),
    ],
)
def test_good_values_pass(field: str, value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env_name(field), value)
    settings = load_settings()
    assert getattr(settings, field) is not None


def test_the_worker_exits_at_once_on_a_bad_setting() -> None:
    """`flowaudit worker` with an unusable Kafka URL: one line, exit 2, no broker, no waiting."""
    env = {"PATH": "/usr/bin:/bin", "FLOWAUDIT_KAFKA_URL": "::not a url::"}
    done = subprocess.run(
        [sys.executable, "-m", "flowaudit.cli", "worker"], env=env, capture_output=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 2
    (line,) = done.stderr.decode().splitlines()
    assert line.startswith("flowaudit: invalid setting FLOWAUDIT_KAFKA_URL=")


# --- input topics: one field per event kind, read off the field declarations ----------------


def test_input_topics_are_the_kinds_in_table_order() -> None:
    settings = Settings()
    assert tuple(settings.input_topics) == KIND_NAMES
    for kind in KINDS.values():
        assert kind.topic_setting in Settings.model_fields, f"Settings has no field {kind.topic_setting}"
        assert settings.input_topics[kind.name] == getattr(settings, kind.topic_setting)


def test_input_topics_are_today_s_defaults() -> None:
    assert Settings().input_topics == {
        "device_sync": "flowaudit.device-sync",
        "sharing": "flowaudit.sharing",
        "subcontractor_transfer": "flowaudit.subcontractor-transfer",
    }


def test_each_kinds_topic_is_set_by_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in KINDS.values():
        monkeypatch.setenv(kind.topic_env, f"custom.{kind.name}")
    topics = Settings().input_topics
    assert topics == {name: f"custom.{name}" for name in KIND_NAMES}
    assert KINDS["device_sync"].topic_env == "FLOWAUDIT_TOPIC_DEVICE_SYNC"


def test_the_consent_topic_is_its_own_setting_not_a_flow_input_topic(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FLOWAUDIT_TOPIC_CONSENT", raising=False)
    settings = Settings()
    assert settings.consent_topic == settings.topic_consent == "flowaudit.consents"
    assert INPUT_KINDS["consent"].topic_setting == "topic_consent"
    assert "consent" not in settings.input_topics
    assert settings.consent_topic not in settings.input_topics.values()
    monkeypatch.setenv(env_name("topic_consent"), "custom.consents")
    assert env_name("topic_consent") == "FLOWAUDIT_TOPIC_CONSENT"
    assert Settings().consent_topic == "custom.consents"
    assert cli.main(["config"]) == 0
    assert json.loads(capsys.readouterr().out)["topic_consent"] == "custom.consents"


def test_output_topics_are_not_input_topics() -> None:
    settings = Settings()
    outputs = {settings.topic_approved, settings.topic_blocked, settings.topic_dead_letter}
    assert outputs.isdisjoint(settings.input_topics.values())
    assert settings.consent_topic not in outputs


def test_the_checkpoint_key_is_a_secret_masked_by_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flowaudit.domain.checkpoint import NoteSigner

    skey = NoteSigner("audit.example", bytes(range(32))).skey
    monkeypatch.setenv("FLOWAUDIT_CHECKPOINT_KEY", skey)
    assert Settings().checkpoint_key_value == skey
    assert cli.main(["config"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["checkpoint_key"] == "***" and skey.split("+")[-1] not in printed
