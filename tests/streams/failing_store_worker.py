"""Test helper, run as a script: a worker whose audit inserts always fail (ClickHouse "down").

Everything else is the real worker: same runtime, same Faust app, same retry loop.
"""

from __future__ import annotations

import sys
from typing import Any

from flowaudit import runtime as runtime_module
from flowaudit.common.settings import Settings
from flowaudit.sinks.clickhouse import AuditStore


class DownClient:
    def __init__(self, real: Any) -> None:
        self.real = real

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("ClickHouse is down (test)")

    def __getattr__(self, name: str) -> Any:  # reads still work: only inserts fail
        return getattr(self.real, name)

    def close(self) -> None:
        self.real.close()


_connect = AuditStore.connect


def _connect_then_break(self: AuditStore, **kwargs: Any) -> None:
    _connect(self, **kwargs)
    self._client = DownClient(self._client)


AuditStore.connect = _connect_then_break  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(runtime_module.run_worker(Settings(), "INFO"))
