"""The worker's process set-up (no broker, no store)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faust
import pytest

from flowaudit.runtime import make_worker


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.handlers = [logging.NullHandler()]  # Faust's hook adjusts the first handler
    try:
        yield root
    finally:
        root.setLevel(level)
        root.handlers = handlers


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR])
def test_a_quiet_worker_keeps_the_root_logger_at_the_chosen_level(
    root_logger: logging.Logger, level: int
) -> None:
    # Faust's terminal spinner would set the root logger to DEBUG to spin on every record, which
    # makes every library's debug call build a LogRecord (aiokafka logs each request at debug).
    app = faust.App("flowaudit-test-runtime", broker="memory://", autodiscover=False, web_enabled=False)
    worker = make_worker(app, logging.getLevelName(level))
    root_logger.setLevel(level)
    worker.on_setup_root_logger(root_logger, level)
    assert root_logger.level == level
    assert all(handler.level in (logging.NOTSET, level) for handler in root_logger.handlers)
