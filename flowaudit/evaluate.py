"""`flowaudit evaluate`: canonical JSON events in (one per line), one decision per line out, in order."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from flowaudit.common.tuning import tune_process
from flowaudit.domain.consent import CONSENT_KIND, MemoryConsentLedger, consent_from_mapping
from flowaudit.domain.decision import Decider
from flowaudit.domain.events import InvalidEvent, check_occurred_at, event_from_mapping
from flowaudit.domain.policy import Policy


@dataclass
class EvaluationStats:
    lines: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0


def evaluate_lines(
    lines: Iterable[bytes], policy: Policy, out: BinaryIO, *, verbose: bool = False, flush_every: int = 4096
) -> EvaluationStats:
    """Decide each line and write the result; never stops on a bad line. Memory stays flat over flow
    lines (the consent ledger grows with the consent lines read: one record per consent id)."""
    ledger = MemoryConsentLedger()
    decider = Decider(policy, ledger)
    stats = EvaluationStats()
    started = time.perf_counter()
    pending: list[bytes] = []
    for number, line in enumerate(lines, start=1):
        stats.lines = number
        try:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InvalidEvent(f"not valid JSON: {exc}") from None
            payload = _evaluate_record(record, policy, decider, ledger, verbose)
        except InvalidEvent as exc:
            stats.errors += 1
            payload = {"line": number, "error": str(exc)}
        pending.append(orjson.dumps(payload))
        if len(pending) >= flush_every:
            out.write(b"\n".join(pending) + b"\n")
            pending.clear()
    if pending:
        out.write(b"\n".join(pending) + b"\n")
    out.flush()
    stats.seconds = time.perf_counter() - started
    return stats


def _evaluate_record(
    record: object, policy: Policy, decider: Decider, ledger: MemoryConsentLedger, verbose: bool
) -> dict[str, object]:
    """The output object of one parsed line: a consent line updates the ledger (in input order: later
    flow lines see it, earlier ones did not); a flow line is decided. InvalidEvent when invalid."""
    now_ms = int(time.time() * 1000)
    if isinstance(record, dict) and record.get("event_type") == CONSENT_KIND:
        consent = consent_from_mapping(record, policy)
        check_occurred_at(consent.occurred_at_ms, now_ms)
        ledger.apply(consent)
        return {"event_id": consent.event_id, "consent": consent.action, "consent_id": consent.consent_id}
    event = event_from_mapping(record, policy)  # type: ignore[arg-type]  # it checks the type itself
    check_occurred_at(event.occurred_at_ms, now_ms)
    decision = decider.decide(event)
    return decision.to_dict() if verbose else decision.to_contract_dict()


def read_lines(source: BinaryIO) -> Iterable[bytes]:
    """Lines without their line terminator; a final newline does not make an extra empty line."""
    for line in source:
        yield line.rstrip(b"\r\n")


def run(path: str, policy: Policy, *, verbose: bool, quiet: bool) -> int:
    tune_process()
    if path == "-":
        stats = evaluate_lines(read_lines(sys.stdin.buffer), policy, sys.stdout.buffer, verbose=verbose)
    else:
        with open(path, "rb") as source:
            stats = evaluate_lines(read_lines(source), policy, sys.stdout.buffer, verbose=verbose)
    if not quiet:
        print(
            f"flowaudit evaluate: {stats.lines} lines, {stats.errors} invalid, "
            f"{stats.seconds:.2f} s, {stats.rate:,.0f} lines/s (policy {policy.version})",
            file=sys.stderr,
        )
    return 1 if stats.errors else 0
