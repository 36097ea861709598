"""The compiled policy holds plain frozen values, nothing of the file schemas."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel

from flowaudit.domain.policy import Category, Policy


def _values(value: Any) -> Any:
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _values(getattr(value, field.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _values(key)
            yield from _values(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _values(item)


def test_the_loaded_policy_holds_no_pydantic_model(policy: Policy) -> None:
    assert not [value for value in _values(policy) if isinstance(value, BaseModel)]
    assert all(isinstance(category, Category) for category in policy.categories.values())


def test_the_compiled_objects_are_frozen(policy: Policy) -> None:
    for value in (policy, policy.categories["health"], policy.rules[0], policy.subcontractor_list[0]):
        first = dataclasses.fields(value)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, first, "changed")
