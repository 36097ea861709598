"""The audit writer: batches from the pipeline into the store, one executor thread, group-committing.

`ClickHouseSink.write(records)` returns (rows written, rows already present) once the insert that
holds the records has returned: only then may the caller acknowledge their offsets. While the store
fails it retries with bounded back-off and raises back-pressure (`flowaudit_backpressure`); it never
drops a batch. It is the `AuditSink` of `flowaudit.streams.pipeline` (structurally: no import).

`ClickHouseSink.write_consents(records)` does the same for consent events (`sinks.consents`): it
returns (rows written, rows already present) once the consent rows and the notices of the batch's
withdrawals are durable, retried like `write`. Both go through one queue on the store's thread, in
the order they were called: a withdrawal's notices see every flow batch handed over before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from flowaudit.common import metrics
from flowaudit.sinks.audit import AuditRecord
from flowaudit.sinks.clickhouse import AuditStore, PreparedBatch, StoreError, qualify, retry_store
from flowaudit.sinks.consents import ConsentAuditRecord, ConsentBatch
from flowaudit.sinks.merkle_verify import VerifyOptions, full_verification
from flowaudit.sinks.verify import VerifyReport

log = logging.getLogger(__name__)

# A queued request: audit records or consent records (each kind coalesced: `_next_group`)
_Records = Sequence[AuditRecord] | Sequence[ConsentAuditRecord]
_Request = tuple[_Records, bool, "asyncio.Future[tuple[int, int]]", float]  # ..., when handed over
# Consent requests wait to be written together only while flow batches keep coming: when no request
# at all has come for this long (flow agents hand a batch over at least every FLOWAUDIT_BATCH_MAX_SECONDS,
# 0.25 s by default, while their topics have records), the flows have paused or a backlog has ended,
# and the waiting ones are written instead of waiting out FLOWAUDIT_CONSENT_WRITE_DELAY_SECONDS.
IDLE_SECONDS = 0.3

# Rows verified per step while the worker writes (an insert waits for at most one step): ~0.1-0.2 s
VERIFY_WINDOW_ROWS = 20_000


class ClickHouseSink:
    """Writes audit batches through one executor thread (chDB has no async client), group-committing.

    Batches handed over while an insert is running are coalesced into the next insert: fewer, larger
    inserts (ClickHouse prefers about one per second) and fewer parts to merge. Each caller's
    `write` returns when the insert holding its records returned.

    While inserts fail it keeps retrying with bounded back-off and reports back-pressure: the agents
    awaiting `write` consume nothing more, so Kafka holds the records. An insert that takes longer
    than `slow_seconds` holds consumption back just the same, and reports it too. Only `stop()` ends
    the retries; the batches are then not acknowledged, and every later write is refused.
    """

    def __init__(
        self,
        store: AuditStore,
        max_backoff: float = 30.0,
        max_rows: int = 100_000,
        slow_seconds: float = 5.0,
        consent_delay_seconds: float = 0.0,
    ) -> None:
        # Consent batches may wait `consent_delay_seconds` to be written together: a store call for
        # them is three statements (lookup, insert, the withdrawals' notices) whatever their size,
        # and a batch comes every FLOWAUDIT_BATCH_MAX_SECONDS. Measured with bench/stream.py
        # --consents (120,000 records, 8.9% consents) without the wait: 35-46 consent calls of
        # 232-305 rows, 52-72 ms each, a quarter of the store thread's time for a tenth of the rows.
        self.store = store
        self.max_backoff = max_backoff
        self.max_rows = max_rows
        self.slow_seconds = slow_seconds
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-store")
        self._stopping = False
        # After a write has failed (only at shutdown: until then it retries), later writes are refused
        # too: the failed batch's records come before theirs in their chains and are not acked.
        self._failed: StoreError | None = None
        self._pending: list[_Request] = []  # (records, is consent, caller's future, time), in call order
        self._draining = False
        self.consent_delay_seconds = consent_delay_seconds
        self._arrived = asyncio.Event()  # a request was handed over, or stop() was called
        self._idle = False  # no request came while consent requests waited: write them now
        self._loop: asyncio.AbstractEventLoop | None = None
        for chain, head in store.heads.items():
            metrics.CHAIN_HEAD.labels(chain).set(head.seq)
        merkle_log = getattr(store, "log", None)  # test doubles of the store may have none
        if merkle_log is not None:
            for chain, compact in merkle_log.compacts.items():
                metrics.MERKLE_TREE_SIZE.labels(chain).set(compact.size)

    def stop(self) -> None:
        """Shutdown: retries end after their current attempt, and consent batches waiting to be
        written together are written now. Callable from any thread."""
        self._stopping = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits on it
                self._loop.call_soon_threadsafe(self._arrived.set)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.store.close()

    async def run(self, function: Any, *args: Any) -> Any:
        """Run a blocking store call on the store's thread (reports and verify use it too)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    @property
    def masked_url(self) -> str:
        return self.store.masked_url

    def query_blocking(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """A report's SQL (table name unqualified) on the store; call it on the store's thread."""
        store = self.store
        return store.query(qualify(sql, store.table), parameters)

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        result: tuple[list[str], list[tuple[Any, ...]]] = await self.run(self.query_blocking, sql, parameters)
        return result

    async def take_chains(self, chains: Sequence[str]) -> None:
        """Their partitions were assigned here: read their heads from the store (on its thread, so
        after every insert handed over before)."""
        await self.run(self._take_chains_blocking, list(chains))
        for chain in chains:
            head = self.store.heads.get(chain)
            metrics.CHAIN_HEAD.labels(chain).set(head.seq if head else 0)

    def _take_chains_blocking(self, chains: list[str]) -> None:
        """Read the heads, retrying with back-off while the store is down (a rebalance during an
        outage waits for the store, as inserts do, instead of crashing the worker)."""
        retry_store(
            lambda: self.store.take_chains(chains),
            "reading the chain heads",
            should_stop=lambda: self._stopping,
            max_backoff=self.max_backoff,
            on_retry=lambda attempt, exc: metrics.BACKPRESSURE.set(1),
        )
        metrics.BACKPRESSURE.set(0)

    async def release_chains(self, chains: Sequence[str]) -> None:
        """Their partitions were revoked: returns once every insert handed over before is done; the
        records of those chains handed over after are not written (the new owner writes them)."""
        await self.run(self.store.release_chains, list(chains))

    async def verify(self, options: VerifyOptions | None = None) -> VerifyReport:
        """Verify the store one window at a time on the store's thread: inserts queued meanwhile run
        between two windows instead of waiting for the whole verification. The Merkle log is
        checked with `options.public_key`, else with this writer's own key."""
        report = VerifyReport()
        steps = full_verification(self.store, report, VERIFY_WINDOW_ROWS, options or VerifyOptions())
        while await self.run(next, steps, False) is not False:
            pass
        return report

    async def write(self, records: Sequence[AuditRecord]) -> tuple[int, int]:
        """Audit rows of `records`: (rows written, rows already present), once durable."""
        return await self._submit(records, consent=False)

    def latest_checkpoints(self, chains: Sequence[str]) -> list[str]:
        """The latest durable signed checkpoint of each of `chains`: after `write` returned, it
        covers the rows written (a chain's tree only grows), so publishing it before the batch is
        acknowledged leaves no acknowledged row outside a published checkpoint."""
        return self.store.latest_checkpoints(chains)

    async def write_consents(self, records: Sequence[ConsentAuditRecord]) -> tuple[int, int]:
        """Consent rows of `records` and the notices of its withdrawals (`sinks.consents`): (rows
        written, rows already present: same event id), once durable; after every batch handed to
        `write` or `write_consents` before it. Retried like `write`; raises StoreError only after
        `stop()`."""
        return await self._submit(records, consent=True)

    async def _submit(self, records: _Records, *, consent: bool) -> tuple[int, int]:
        if not records:
            return 0, 0
        self._loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        self._pending.append((records, consent, done, time.monotonic()))
        self._arrived.set()
        if not self._draining:
            self._draining = True
            self._drainer = asyncio.ensure_future(self._drain())
        return await done

    def _consents_wait(self) -> float:
        """How long the consent requests pending may still wait before they go into a store call
        (0: they go into the next one): until the oldest has waited consent_delay_seconds, and
        not at all at shutdown or once the store has been idle for IDLE_SECONDS."""
        oldest = next((handed for _, consent, _, handed in self._pending if consent), None)
        if oldest is None or self._stopping or self._idle:
            return 0.0
        return max(0.0, self.consent_delay_seconds - (time.monotonic() - oldest))

    def _next_group(self) -> list[_Request]:
        """The requests of the next store call, in call order: the pending audit requests up to
        max_rows rows, and the consent requests among them once they are due (`_consents_wait`).

        Consent requests are written after the group's audit rows, and never before an audit
        request handed over ahead of them (the group stops at the first one that does not fit), so
        a withdrawal's notices see every flow batch handed over before it. They may see some handed
        over after it: a flow of before the withdrawal, decided with the consent still valid, is
        owed a notice too."""
        consents_due = self._consents_wait() == 0.0
        group: list[_Request] = []
        kept: list[_Request] = []
        rows = 0
        while self._pending:
            request = self._pending[0]
            records, consent = request[0], request[1]
            if not consent and rows and rows + len(records) > self.max_rows:
                break
            self._pending.pop(0)
            if consent and not consents_due:
                kept.append(request)
                continue
            rows += 0 if consent else len(records)
            group.append(request)
        self._pending[:0] = kept
        return group

    async def _drain(self) -> None:
        try:
            while self._pending:
                self._arrived.clear()
                group = self._next_group()
                if not group:  # only consent requests, not due yet: wait for them or for more requests
                    wait = self._consents_wait()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), timeout=min(wait, IDLE_SECONDS))
                    except TimeoutError:  # due, or nothing else came: waiting longer only delays them
                        self._idle = True
                    continue
                self._idle = False
                # a slow insert holds consumption back as a failing one does: say so while it lasts
                slow = asyncio.get_running_loop().call_later(self.slow_seconds, metrics.BACKPRESSURE.set, 1)
                try:
                    results = await self.run(self._write_group_blocking, [(r[0], r[1]) for r in group])
                    metrics.BACKPRESSURE.set(0)
                except Exception as exc:  # every caller of the group learns of the failure
                    for _, _, done, _ in group:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                finally:
                    slow.cancel()
                for (_, _, done, _), result in zip(group, results, strict=True):
                    if not done.done():
                        done.set_result(result)
        finally:
            self._draining = False

    def _write_group_blocking(self, group: list[tuple[_Records, bool]]) -> list[tuple[int, int]]:
        """On the store thread: the group's audit rows in one insert, then its consent rows in one
        insert and their notices in one statement; (written, already present) per request."""
        audits = [cast(Sequence[AuditRecord], r) for r, consent in group if not consent]
        consents = [cast(Sequence[ConsentAuditRecord], r) for r, consent in group if consent]
        audit_results = iter(self._write_blocking(audits) if audits else [])
        consent_results = iter(self._write_consents_blocking(consents) if consents else [])
        return [next(consent_results if consent else audit_results) for _, consent in group]

    def _on_retry(self, attempt: int, exc: Exception) -> None:
        metrics.AUDIT_INSERT_FAILURES.inc()
        metrics.AUDIT_INSERT_RETRIES.inc()
        metrics.BACKPRESSURE.set(1)

    def _write_blocking(self, requests: list[Sequence[AuditRecord]]) -> list[tuple[int, int]]:
        """One insert for all requests, on the store thread; returns (written, already present) each.

        Preparing the rows here rather than on the event loop measured better (bench/stream.py): it
        overlaps with the loop's waits on the network instead of stalling the loop.
        """
        batch, results = self._prepare(requests)
        if not batch.empty:
            self._insert_blocking(batch)
        return results

    def _write_consents_blocking(self, requests: list[Sequence[ConsentAuditRecord]]) -> list[tuple[int, int]]:
        """On the store thread, for all the requests at once: look up, insert, write the notices;
        each step retried with back-off on its own, so a retried insert is the same rows with the
        same token (dropped by ClickHouse if it had landed) and the counts are those of the first
        lookup."""
        if self._failed is not None:
            raise StoreError(f"an earlier audit batch was not written ({self._failed}); refusing later ones")
        store = self.store
        prepared: list[tuple[ConsentBatch, list[tuple[int, int]]]] = []
        steps: list[tuple[str, Any]] = [
            ("consent lookup", lambda: prepared.append(store.prepare_consent_requests(requests))),
            ("consent insert", lambda: store.insert_consents(prepared[-1][0])),
            ("withdrawal notices", lambda: store.record_withdrawal_notices(prepared[-1][0])),
        ]
        try:
            for what, step in steps:
                retry_store(
                    step,
                    what,
                    should_stop=lambda: self._stopping,
                    max_backoff=self.max_backoff,
                    on_retry=self._on_retry,
                )
        except StoreError as exc:
            metrics.BACKPRESSURE.set(0)
            self._failed = exc
            raise
        metrics.BACKPRESSURE.set(0)
        return prepared[-1][1]

    def _prepare(self, requests: list[Sequence[AuditRecord]]) -> tuple[PreparedBatch, list[tuple[int, int]]]:
        if self._failed is not None:
            raise StoreError(f"an earlier audit batch was not written ({self._failed}); refusing later ones")
        store = self.store
        batch: PreparedBatch = store.prepare([record for records in requests for record in records])
        # which request each skipped record belongs to needs telling only when some were skipped (a
        # replay after a crash, a duplicate): not per event every batch
        if batch.skipped:
            metrics.AUDIT_ROWS_SKIPPED.inc(batch.skipped)
            skipped_at = batch.skipped_at
            replayed = [
                sum((r.topic, r.partition, r.offset) in skipped_at for r in records) for records in requests
            ]
        else:
            replayed = [0] * len(requests)
        results = [
            (len(records) - skipped, skipped) for records, skipped in zip(requests, replayed, strict=True)
        ]
        return batch, results

    def _insert_blocking(self, batch: PreparedBatch) -> None:
        started = time.perf_counter()
        try:
            self.store.insert_with_retry(
                batch,
                should_stop=lambda: self._stopping,
                max_backoff=self.max_backoff,
                on_retry=self._on_retry,
            )
        except StoreError as exc:
            metrics.BACKPRESSURE.set(0)
            self._failed = exc
            raise
        metrics.BACKPRESSURE.set(0)
        metrics.AUDIT_INSERT_SECONDS.observe(time.perf_counter() - started)
        metrics.AUDIT_BATCHES.inc()
        for decision, count in batch.rows_by_decision.items():
            metrics.AUDIT_ROWS.labels(decision).inc(count)
        metrics.LAST_AUDIT_WRITE.set(time.time())
        for chain, head in batch.heads.items():
            metrics.CHAIN_HEAD.labels(chain).set(head.seq)
        if batch.log_updates:
            metrics.CHECKPOINTS_SIGNED.inc(len(batch.log_updates))
            for chain, update in batch.log_updates.items():
                metrics.MERKLE_TREE_SIZE.labels(chain).set(update.checkpoint.size)
