"""`flowaudit replay --policy DIR`: the command around `sinks.replay` (open, replay, print).

The store is opened to read, as `cli.open_store` opens it (nothing is created, no DDL). An embedded
store held by a running worker cannot be opened by a second process (chDB: one process per path): replay stops
with one line saying to stop the worker or to use a ClickHouse server; it does not go through the
worker's web API (a replay may run for minutes over the whole store, on the store's own thread).

Formats: `table` prints the summary, then the changed decisions, the subjects and the recipients
affected, each as a table; `json` one object with the four; `csv` the changed decisions only (one
table a spreadsheet reads; the subjects and recipients follow from its columns), the summary on
standard error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from flowaudit.common.settings import Settings
from flowaudit.domain.policy import Policy, PolicyError, load_policy
from flowaudit.sinks.clickhouse import AuditStore, StoreError, load_chain_key
from flowaudit.sinks.replay import (
    CHANGE_COLUMNS,
    RECIPIENT_COLUMNS,
    SUBJECT_COLUMNS,
    UNREPRODUCED_COLUMNS,
    ReplayResult,
    as_json,
    recipient_rows,
    replay,
    subject_rows,
    summary_lines,
)
from flowaudit.sinks.reports import DEFAULT_SINCE, DEFAULT_UNTIL, ReportError, normalize_time, render


def render_replay(result: ReplayResult, fmt: str) -> str:
    """The result in `fmt` (table, json, csv; csv: the changes only)."""
    if fmt == "json":
        return json.dumps(as_json(result), indent=2, ensure_ascii=False) + "\n"
    changes = render(list(CHANGE_COLUMNS), result.changes, fmt)
    if fmt == "csv":
        return changes
    return "\n".join(
        (
            "\n".join(summary_lines(result)) + "\n",
            "changed decisions:\n" + changes,
            "subjects affected:\n" + render(list(SUBJECT_COLUMNS), subject_rows(result), fmt),
            "recipients affected:\n" + render(list(RECIPIENT_COLUMNS), recipient_rows(result), fmt),
            "not reproduced under their own policy (not counted above: the policy did not change them):\n"
            + render(list(UNREPRODUCED_COLUMNS), result.unreproduced, fmt),
        )
    )


def _open(settings: Settings, policy: Policy) -> AuditStore:
    """The store, opened to read; StoreError with one line saying what to do when a worker holds it."""
    from flowaudit.webapi import running_worker

    try:
        # as `cli.open_store` (not imported: the CLI imports this module)
        key = load_chain_key(settings.chain_key_value, settings.data_dir, create=False)
        store = AuditStore(settings.resolved_clickhouse_url, policy, key)
        store.connect(writer=False)
        return store
    except StoreError as exc:
        embedded = settings.resolved_clickhouse_url.startswith("chdb:")
        # chDB names no holder: a worker announced in worker.json, or an engine that would not open
        held = running_worker(settings) is not None or "Unable to open the chdb engine" in str(exc)
        if embedded and held:
            raise StoreError(
                "the embedded store is held by another process, a running worker (chDB: one process per "
                "store): stop the worker, or serve the store from ClickHouse (FLOWAUDIT_CLICKHOUSE_URL), "
                "to replay"
            ) from None
        raise


def run_replay(settings: Settings, policy_dir: Path, since: str | None, until: str | None, fmt: str) -> int:
    """Exit 0 with the result on standard output; 2 with one line for a bad argument or store."""
    try:
        whatif = load_policy(policy_dir)
        baseline = load_policy(settings.policy_dir)
    except PolicyError as exc:
        print(f"flowaudit: invalid policy: {exc}", file=sys.stderr)
        return 2
    try:
        start, end = normalize_time(since, DEFAULT_SINCE), normalize_time(until, DEFAULT_UNTIL)
        if start > end:
            raise ReportError(f"--since {since} is after --until {until}")
        store = _open(settings, baseline)
        try:
            result = replay(store, baseline, whatif, start, end)
        finally:
            store.close()
    except (ReportError, StoreError) as exc:
        print(f"flowaudit: {exc}", file=sys.stderr)
        return 2
    if fmt == "csv":
        print("\n".join(summary_lines(result)), file=sys.stderr)
    sys.stdout.write(render_replay(result, fmt))
    return 0
