"""Settings' input topics: one field per event kind, read off the field declarations."""

from __future__ import annotations

import pytest

from flowaudit.common.settings import Settings
from flowaudit.domain.kinds import KIND_NAMES, KINDS


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


def test_output_topics_are_not_input_topics() -> None:
    settings = Settings()
    outputs = {settings.topic_approved, settings.topic_blocked, settings.topic_dead_letter}
    assert outputs.isdisjoint(settings.input_topics.values())
