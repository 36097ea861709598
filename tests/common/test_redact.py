"""mask_url: no form of URL leaks a password or a secret query parameter."""

from __future__ import annotations

import pytest

from flowaudit.common.redact import mask_url

CASES = [
    ("http://writer:s3cret@clickhouse:8123/flowaudit", "http://writer:***@clickhouse:8123/flowaudit"),
    ("https://:s3cret@clickhouse:8443/db", "https://:***@clickhouse:8443/db"),
    ("http://writer:p@ss@host:8123/db", "http://writer:***@host:8123/db"),
    ("http://writer:p/ss@host/db", "http://writer:***@host/db"),
    ("http://writer:pa,ss@host:8123/db", "http://writer:***@host:8123/db"),
    ("kafka://u:s3cret@h1:9092,u2:s3cret2@h2:9092", "kafka://u:***@h1:9092,u2:***@h2:9092"),
    ("u:s3cret@h1:9092,u2:s3cret2@h2:9092", "u:***@h1:9092,u2:***@h2:9092"),
    ("sasl_ssl://u:s3cret@[::1]:9092", "sasl_ssl://u:***@[::1]:9092"),
    ("http://host/db?user=w&password=s3cret&x=1", "http://host/db?user=w&password=***&x=1"),
    ("http://host/db?access_token=s3cret", "http://host/db?access_token=***"),
]


@pytest.mark.parametrize(("url", "masked"), CASES)
def test_passwords_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in (mask_url(url) or "")


@pytest.mark.parametrize(
    "url", ["chdb:///var/lib/flowaudit/audit", "http://reader@host:8123/db", "kafka://h1:9092,h2:9092"]
)
def test_urls_without_secrets_are_unchanged(url: str) -> None:
    assert mask_url(url) == url


def test_none_stays_none() -> None:
    assert mask_url(None) is None
