"""Shared fixtures. Unit tests need no broker or database; integration tests carry the marker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policy import DEFAULT_POLICY_DIR
from streams.policy import Policy, load_policy, load_yaml

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
