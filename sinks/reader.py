"""Reports and verify for the worker's web API through the reader role, never the writer's.

With a ClickHouse server the worker's own connection is the writer's (INSERT and SELECT on the
audit table); what the web API serves to a caller goes through `FLOWAUDIT_CLICKHOUSE_READER_URL`,
a user with the reader role, on a thread and a connection of its own, so a report or a verify never
holds up an insert. chDB has no roles and one process per store: there the writer's store answers.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flowaudit.domain.policy import Policy
from flowaudit.sinks.clickhouse import AuditStore, qualify
from flowaudit.sinks.merkle_verify import VerifyOptions, verify_with
from flowaudit.sinks.verify import VerifyReport


class StoreReader:
    """The audit store opened read-only with the reader role's URL. Raises StoreError on open."""

    def __init__(self, url: str, policy: Policy, chain_key: bytes) -> None:
        self.store = AuditStore(url, policy, chain_key)
        self.store.connect(writer=False)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-reader")

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        store = self.store
        result: tuple[list[str], list[tuple[Any, ...]]] = await asyncio.get_running_loop().run_in_executor(
            self.executor, store.query, qualify(sql, store.table), parameters
        )
        return result

    async def verify(self, options: VerifyOptions | None = None) -> VerifyReport:
        report: VerifyReport = await asyncio.get_running_loop().run_in_executor(
            self.executor, verify_with, self.store, options or VerifyOptions()
        )
        return report

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.store.close()
