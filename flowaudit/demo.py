"""`flowaudit demo`: the whole service on embedded defaults, fed a realistic, reproducible mix.

Starts the embedded broker, the worker (Faust) and the embedded audit store in this process; a
producer thread sends the generated events (and a few corrupt records, which must end up as dead
letters); progress is shown until every record is decided and written; then a summary is read back
from the audit store itself.

The generator's stream holds consent events too (about a tenth): they go to the consent topic, keyed
by `user_id` like every record, in stream order, and the worker keeps them in its consent ledger (a
Faust table). `--events N` counts the flow records; the consents come on top and are counted apart
(the demo ends when both are written). The consent topic and the flow topics are read concurrently,
not in one order: a flow decided before the consent event it cites was read is judged with the ledger
as it then stood (a grant not read yet: `consent-unverified`; a withdrawal not read yet: allowed), so
those counts vary a little from run to run; `flowaudit evaluate` over the same stream is exact.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowaudit.common.settings import Settings
from flowaudit.common.tuning import tune_process
from flowaudit.domain.codec import MAGIC
from flowaudit.domain.consent import CONSENT_KIND
from flowaudit.domain.kinds import CONSENT_ROLE, INPUT_KINDS
from flowaudit.domain.policy import Policy, load_policy
from flowaudit.generator import EventGenerator
from flowaudit.produce import EventProducer
from flowaudit.runtime import Runtime, build_runtime, make_worker, start_metrics_server
from flowaudit.sinks.clickhouse import AuditStore, StoreError, load_chain_key, qualify
from flowaudit.streams.messages import BatchResult
from flowaudit.streams.pipe import PipelineProcessError

log = logging.getLogger(__name__)

# One record in this many is deliberately broken (truncated body, unknown schema, invalid content).
BAD_RECORD_EVERY = 500
# The embedded broker keeps about 5 MB per partition; the producer never runs further ahead of the
# worker than this, so no record falls off the log before it is read.
MAX_AHEAD = 20_000


@dataclass
class Progress:
    produced: int = 0
    producing_done: bool = False
    producer_error: str | None = None
    consumed: int = 0
    consents_produced: int = 0
    consents_consumed: int = 0
    consents_dead_lettered: int = 0
    allowed: int = 0
    blocked: int = 0
    dead_lettered: int = 0
    written: int = 0
    stopping: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, kind: str, result: BatchResult) -> None:
        with self.lock:
            if INPUT_KINDS[kind].role == CONSENT_ROLE:  # ledger input: counted apart from the flows
                self.consents_consumed += result.consumed
                self.consents_dead_lettered += result.dead_lettered
                return
            self.consumed += result.consumed
            self.allowed += result.allowed
            self.blocked += result.blocked
            self.dead_lettered += result.dead_lettered
            self.written += result.written

    @property
    def complete(self) -> bool:
        return (
            self.producing_done
            and self.consumed >= self.produced
            and self.consents_consumed >= self.consents_produced
        )


def _bad_record(number: int, producer: EventProducer, raw: dict[str, Any]) -> None:
    """Send the flow `raw` as one deliberately broken record of a rotating sort."""
    kind = raw["event_type"]
    sort = number % 3
    if sort == 0:  # a truncated body
        from flowaudit.domain.events import event_from_mapping
        from flowaudit.produce import avro_record

        data = producer.codec.encode(kind, avro_record(event_from_mapping(raw, producer.policy)))
        producer.send_bytes(kind, data[: len(data) // 2])
    elif sort == 1:  # written with a schema nobody registered
        producer.send_bytes(kind, MAGIC + b"\xde\xad\xbe\xef\x00\x00\x00\x01" + b"\x00" * 16)
    else:  # well-formed Avro, invalid event: not a country
        from flowaudit.domain.events import event_from_mapping
        from flowaudit.produce import avro_record

        record = avro_record(event_from_mapping(raw, producer.policy))
        record["destination_country"] = "XX"
        producer.send_bytes(kind, producer.codec.encode(kind, record))


def _flows_sent(producer: EventProducer) -> int:
    """The records sent that the worker decides and reports on: all but the consents."""
    return producer.sent - producer.sent_by_kind[CONSENT_KIND]


def _produce(runtime: Runtime, progress: Progress, count: int, seed: int) -> None:
    """Send the generator's stream until `count` flow records are sent (the consents among them too)."""
    try:
        producer = EventProducer(runtime.bootstrap, runtime.settings, runtime.policy)
        generator = EventGenerator(runtime.policy, seed=seed)
        number = 0
        while number < count:
            raw = generator.next_record()
            if raw["event_type"] == CONSENT_KIND:
                producer.send(raw)  # to the consent topic, in stream order
                continue
            number += 1
            if number % BAD_RECORD_EVERY == 0:
                _bad_record(number // BAD_RECORD_EVERY, producer, raw)
            else:
                producer.send(raw)
            if number % 1000 == 0:
                with progress.lock:
                    progress.produced = _flows_sent(producer)
                    progress.consents_produced = producer.sent_by_kind[CONSENT_KIND]
                while _flows_sent(producer) - progress.consumed > MAX_AHEAD and not progress.stopping:
                    producer.flush()
                    time.sleep(0.05)
        producer.close()
        with progress.lock:
            progress.produced = _flows_sent(producer)
            progress.consents_produced = producer.sent_by_kind[CONSENT_KIND]
    except Exception as exc:  # shown in the summary; the demo then stops
        log.exception("the demo producer failed")
        progress.producer_error = str(exc)
    finally:
        progress.producing_done = True


# What the summary says of the rules and flags whose checks read the consent ledger (by check name):
# the stream reads the consent topic and the flow topics concurrently (see the module's docstring).
LEDGER_NOTES = {
    "consent_not_valid": "as the ledger stood when the flow was decided",
    "consent_unverified": "never granted, or its grant not read yet when the flow was decided",
}


def _counts(store: AuditStore, sql: str, since: dict[str, Any]) -> dict[str, int]:
    _, rows = store.query(sql, since)
    return {str(key): int(count) for key, count in rows}


def _every(ids: list[str], seen: dict[str, int]) -> dict[str, int]:
    """A count for each id of the policy (zeros included, so a missing one shows), then any other id
    seen in the store; by count, then in the policy's order."""
    counts = {rule_id: seen.get(rule_id, 0) for rule_id in ids}
    counts.update((rule_id, n) for rule_id, n in seen.items() if rule_id not in counts)
    order = {rule_id: index for index, rule_id in enumerate(counts)}
    return dict(sorted(counts.items(), key=lambda item: (-item[1], order[item[0]])))


def _summary(store: AuditStore, progress: Progress, started_ms: int) -> dict[str, Any]:
    policy = store.policy
    since = {"since": started_ms / 1000}
    where = (
        f"FROM {store.table} WHERE ingested_at >= fromUnixTimestamp64Milli(toInt64({{since:Float64}} * 1000))"
    )
    consent_where = qualify(where.replace(store.table, "consent_events"), store.table)
    notice_where = "WHERE recorded_at >= fromUnixTimestamp64Milli(toInt64({since:Float64} * 1000))"
    _, by_kind = store.query(
        f"SELECT event_type, decision, count() {where} GROUP BY 1, 2 ORDER BY 1, 2", since
    )
    by_rule = _counts(store, f"SELECT arrayJoin(rules) AS rule, count() {where} GROUP BY rule", since)
    by_flag = _counts(store, f"SELECT arrayJoin(flags) AS flag, count() {where} GROUP BY flag", since)
    _, health = store.query(
        f"SELECT destination_country, countIf(decision = 'blocked'), count() {where} AND special_category "
        "GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT 10",
        since,
    )
    _, mechanisms = store.query(
        f"SELECT transfer_mechanism, countIf(decision = 'blocked'), count() {where} "
        "AND transfer_mechanism IS NOT NULL GROUP BY 1 ORDER BY 3 DESC, 1",
        since,
    )
    consents = _counts(store, f"SELECT action, count() {consent_where} GROUP BY action", since)
    notice_sql = qualify(f"SELECT count() FROM consent_withdrawal_notices {notice_where}", store.table)
    notices = int(store.query(notice_sql, since)[1][0][0])
    kinds: dict[str, dict[str, int]] = {}
    for kind, decision, count in by_kind:
        kinds.setdefault(kind, {"allowed": 0, "blocked": 0})[decision] = int(count)
    allowed = sum(k["allowed"] for k in kinds.values())
    blocked = sum(k["blocked"] for k in kinds.values())
    return {
        "events": progress.produced,
        "allowed": allowed,
        "blocked": blocked,
        "dead_lettered": progress.dead_lettered,
        "audit_rows": allowed + blocked,
        "accounted_for": allowed + blocked + progress.dead_lettered == progress.produced
        and sum(consents.values()) + progress.consents_dead_lettered == progress.consents_produced,
        "consents": {
            "produced": progress.consents_produced,
            **{action: consents.get(action, 0) for action in ("granted", "withdrawn")},
            "dead_lettered": progress.consents_dead_lettered,
            "withdrawal_notices": notices,
        },
        "by_kind": kinds,
        "blocked_by_rule": _every([rule.id for rule in policy.rules], by_rule),
        "flags": _every([flag.id for flag in policy.flags], by_flag),
        "transfers_outside_eea": {
            str(mechanism): {"events": int(n), "blocked": int(b)} for mechanism, b, n in mechanisms
        },
        "notes": {
            rule.id: LEDGER_NOTES[rule.check]
            for rule in (*policy.rules, *policy.flags)
            if rule.check in LEDGER_NOTES
        },
        "health_data_destinations": [
            {"country": c, "blocked": int(b), "events": int(n)} for c, b, n in health
        ],
    }


def _print_counts(title: str, counts: dict[str, int], notes: dict[str, str]) -> None:
    print(f"\n{title}")
    for rule_id, count in counts.items():
        note = f"   ({notes[rule_id]})" if rule_id in notes else ""
        print(f"  {rule_id:<40} {count:>7,}{note}")


def _print_summary(summary: dict[str, Any]) -> None:
    print()
    print(
        f"flowaudit demo: {summary['events']:,} records produced in {summary['elapsed_seconds']:.1f} s "
        f"({summary['events_per_second']:,.0f}/s end to end)"
    )
    print(
        f"  allowed {summary['allowed']:,}   blocked {summary['blocked']:,}   "
        f"dead-lettered {summary['dead_lettered']:,}   audit rows {summary['audit_rows']:,}   "
        f"all accounted for: {'yes' if summary['accounted_for'] else 'NO'}"
    )
    consents = summary["consents"]
    print(
        f"  consents {consents['produced']:,} produced: granted {consents['granted']:,}, "
        f"withdrawn {consents['withdrawn']:,}, dead-lettered {consents['dead_lettered']:,}; "
        f"withdrawal notices {consents['withdrawal_notices']:,} (flows that relied on a withdrawn consent)"
    )
    print("\nevents by kind and decision:")
    for kind, counts in summary["by_kind"].items():
        print(f"  {kind:<24} allowed {counts['allowed']:>7,}   blocked {counts['blocked']:>6,}")
    notes = summary["notes"]
    _print_counts(
        "blocked by rule (an event may fire several; every rule, zeros included):",
        summary["blocked_by_rule"],
        notes,
    )
    _print_counts("advisory flags raised (they never block):", summary["flags"], notes)
    print("\ntransfers outside the EEA by transfer mechanism:")
    for mechanism, row in summary["transfers_outside_eea"].items():
        print(f"  {mechanism:<20} {row['events']:>7,} events, {row['blocked']:>6,} blocked")
    print("\ntop destinations of health data:")
    for row in summary["health_data_destinations"]:
        print(f"  {row['country']}  {row['events']:>7,} events, {row['blocked']:>6,} blocked")
    print(f"\naudit store: {summary['store']}  (policy {summary['policy_version']})")
    print("query it:")
    for line in summary["how_to_query"]:
        print(f"  {line}")


@dataclass
class _Stop:
    """Why and when the demo asked the worker to stop ("done" when every record was accounted for)."""

    reason: str = ""
    task: asyncio.Future[Any] | None = None


def _stop_when_done(
    runtime: Runtime, worker: Any, progress: Progress, started: float, timeout: float
) -> _Stop:
    """Show progress every second and stop the worker once every record is decided and written."""
    stop = _Stop()
    last_print = [0.0]

    @runtime.app.timer(0.25)  # type: ignore[untyped-decorator]
    async def watch() -> None:
        now = time.perf_counter()
        if now - last_print[0] >= 1.0 or progress.complete:
            last_print[0] = now
            print(
                f"\r  produced {progress.produced:>8,}  decided {progress.allowed + progress.blocked:>8,} "
                f"(allowed {progress.allowed:,}, blocked {progress.blocked:,})  dead-lettered "
                f"{progress.dead_lettered:,}  written {progress.written:,}   ",
                end="",
                file=sys.stderr,
                flush=True,
            )
        reason = ""
        if progress.complete:
            reason = "done"
        elif progress.producer_error:
            reason = f"producer failed: {progress.producer_error}"
        elif now - started > timeout:
            reason = f"timed out after {timeout:.0f} s"
        if reason and not stop.reason:
            progress.stopping = True
            stop.reason, stop.task = reason, asyncio.ensure_future(worker.stop())

    return stop


def _final_summary(
    runtime: Runtime, settings: Settings, policy: Policy, progress: Progress, started_ms: int, elapsed: float
) -> dict[str, Any]:
    """The summary read back from the audit store, with the commands that query it."""
    store = AuditStore(runtime.store_url, policy, load_chain_key(settings.chain_key_value, settings.data_dir))
    store.connect()
    try:
        summary = _summary(store, progress, started_ms)
        # the data subject with the most flows: an Art. 15 example that returns rows
        _, busiest = store.query(
            f"SELECT user_id FROM {store.table} WHERE user_id IS NOT NULL "
            "GROUP BY user_id ORDER BY count() DESC, user_id LIMIT 1"
        )
    finally:
        store.close()
    data_dir = settings.data_dir
    # the command as this run was started (.venv/bin/flowaudit after `make demo`), so lines can be pasted
    command = sys.argv[0] if Path(sys.argv[0]).name == "flowaudit" else "flowaudit"
    summary.update(
        elapsed_seconds=round(elapsed, 2),
        events_per_second=round(progress.produced / elapsed) if elapsed else 0,
        store=store.masked_url,
        policy_version=policy.version,
        how_to_query=[
            f"FLOWAUDIT_DATA_DIR={data_dir} {command} report --list",
            f"FLOWAUDIT_DATA_DIR={data_dir} {command} report blocked-health-transfers",
            *(
                f"FLOWAUDIT_DATA_DIR={data_dir} {command} report user-disclosures --user {user}"
                for (user,) in busiest
            ),
            f"FLOWAUDIT_DATA_DIR={data_dir} {command} ropa --format html --out {data_dir / 'ropa.html'}",
            f"FLOWAUDIT_DATA_DIR={data_dir} {command} map --out {data_dir / 'map.html'}",
            f"FLOWAUDIT_DATA_DIR={data_dir} {command} verify",
            'python -c "import clickhouse_connect as c; '
            f"print(c.get_client(dsn='{store.url}').query('SELECT count() FROM audit_events').result_rows)\"",
        ],
    )
    return summary


def run_demo(settings: Settings, events: int, as_json: bool, seed: int = 42, timeout: float = 900.0) -> int:
    tune_process()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    demo_dir = settings.data_dir / "demo"
    if settings.clickhouse_url is None:
        shutil.rmtree(demo_dir / "audit", ignore_errors=True)  # a demo starts from an empty store
    demo_settings = settings.model_copy(update={"data_dir": demo_dir, "web_port": 0})
    policy = load_policy(demo_settings.policy_dir)
    progress = Progress()
    started_ms = int(time.time() * 1000)
    started = time.perf_counter()
    try:
        runtime = build_runtime(demo_settings, observer=progress.observe, policy=policy, web_enabled=False)
    except (StoreError, PipelineProcessError) as exc:
        print(f"flowaudit demo: {exc}", file=sys.stderr)
        return 2
    start_metrics_server(demo_settings, runtime.metrics_registry)
    worker = make_worker(runtime.app, "WARNING")
    stop = _stop_when_done(runtime, worker, progress, started, timeout)
    print(
        f"flowaudit demo: embedded broker {runtime.bootstrap} (development only), store "
        f"{runtime.masked_store_url}, {events:,} events (seed {seed})",
        file=sys.stderr,
    )
    threading.Thread(target=_produce, args=(runtime, progress, events, seed), daemon=True).start()
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        runtime.close()
    print(file=sys.stderr)
    elapsed = time.perf_counter() - started
    if stop.reason != "done":
        print(
            f"flowaudit demo: stopped before the end: {stop.reason or runtime.app.fatal_error}",
            file=sys.stderr,
        )
        return 1
    summary = _final_summary(runtime, demo_settings, policy, progress, started_ms, elapsed)
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0 if summary["accounted_for"] else 1
