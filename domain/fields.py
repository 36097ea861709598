"""`InvalidEvent` and the field checks shared by the common validation and the kinds' validators.

It sits below both `events` (the fields every kind has) and `kinds` (the fields of one kind) so that
`kinds` needs nothing above it: the policy model imports `kinds` for the kind names, and `events`
imports the policy model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class InvalidEvent(ValueError):
    """A record that is not a valid event; the message says why."""


def required_str(record: Mapping[str, Any], name: str) -> str:
    """`record[name]` if it is a string with something besides white space (JSON path: any type)."""
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidEvent(f"{name} must be a non-empty string")
    return value


def non_empty(record: Mapping[str, Any], name: str) -> str:
    """`record[name]`, which the Avro schema made a string, if it is not blank (Avro path)."""
    value: str = record[name]
    if not value.strip():
        raise InvalidEvent(f"{name} must be a non-empty string")
    return value


def optional_str(record: Mapping[str, Any], name: str) -> str | None:
    """`record[name]` if it is a string (any, even empty); None when absent or null (JSON path)."""
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string or null, got {type(value).__name__}")
    return value


def bool_field(
    record: Mapping[str, Any], name: str, *, required: bool, default: bool | None = None
) -> bool | None:
    """`record[name]` if it is a boolean; `default` when absent or null and not `required`."""
    value = record.get(name)
    if value is None and not required:
        return default
    if not isinstance(value, bool):
        raise InvalidEvent(f"{name} must be true or false")
    return value


def user_ids(value: Any, name: str) -> tuple[str, ...]:
    """`value` as a tuple if it is a non-empty array of distinct, non-blank strings (both paths).

    The JSON path may pass anything; the Avro path passes the list of strings its schema made.
    """
    if not isinstance(value, list | tuple) or not value:
        shown = "an empty array" if isinstance(value, list | tuple) else type(value).__name__
        raise InvalidEvent(f"{name} must be a non-empty array of distinct user ids, or null; got {shown}")
    seen: set[str] = set()
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise InvalidEvent(f"{name} must hold non-empty user id strings, got {item!r}")
        if item in seen:
            raise InvalidEvent(f"{name} must be distinct user ids: {item!r} appears more than once")
        seen.add(item)
    return tuple(value)


def country_code(value: str, name: str, countries: frozenset[str]) -> str:
    """The upper-cased code if it is one of `countries` (the policy's ISO 3166-1 alpha-2 list)."""
    code = value.strip().upper()
    if code not in countries:
        raise InvalidEvent(f"{name} is not an ISO 3166-1 alpha-2 country code: {value!r}")
    return code
