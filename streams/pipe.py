"""The pipe between the worker's process and the pipeline process: everything that crosses it, declared.

Once, at spawn: `PipelineConfig` (worker → pipeline process), answered by one `Startup` message.
Then `ToPipeline` messages go one way and `ToWorker` messages the other, each a frozen dataclass; each
side checks what it receives once (`is_to_pipeline`, `is_to_worker`) and dispatches it in one `match`
whose exhaustiveness mypy checks (`assert_never`).

A batch is `SubmitBatch`, answered by `Routed` as soon as it is decided (the worker forwards from
it), then by `Written` once its audit rows are durable, or by `Failed` at either point. Control
requests (`Request`) are answered by one `Reply` each. Messages carry an `ident` chosen by the worker
to match answers to what is waiting for them.

What crosses is kept as small as it is cheap to pickle: a batch goes as columns (values, partitions,
offsets, timestamps; the topic column repeats one string, which pickle sends once), and only its
`Routes` come back (per record: index, key, decision header), never the payloads (README
"Performance": the per-record cost of pickling is what limits this design).
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeGuard

from flowaudit.domain.ledger import DEFAULT_MAX_PERIODS, Entry
from flowaudit.domain.policy import Policy
from flowaudit.sinks.merkle_verify import VerifyOptions
from flowaudit.streams.messages import BatchResult, InboundMessage
from flowaudit.streams.route import Routes


class PipelineProcessError(RuntimeError):
    """The pipeline process did not start, died, or failed in a way that could not be sent back."""


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the second process needs, sent once when it is spawned (not the Settings object)."""

    kinds: tuple[str, ...]
    policy: Policy
    store_url: str
    chain_key: bytes
    insert_retry_max_seconds: float
    invalid_ratio_limit: float
    invalid_ratio_window: int
    loglevel: int
    consent_max_periods: int = DEFAULT_MAX_PERIODS
    consent_write_delay_seconds: float = 0.0
    checkpoint_key: str | None = None  # the Merkle log's signer key string (None: no Merkle log)


def portable(error: BaseException) -> BaseException:
    """The error itself if it survives pickling, else a description of it (to send it over the pipe)."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return PipelineProcessError(f"{type(error).__name__}: {error}")
    return error


# --- worker → pipeline process ---------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitBatch:
    """A batch of one kind to decide and write, as columns. Keys stay behind: only the worker uses them."""

    ident: int
    kind: str
    topics: tuple[str, ...]
    partitions: tuple[int, ...]
    offsets: tuple[int, ...]
    values: tuple[bytes | None, ...]
    timestamps: tuple[int | None, ...]

    @classmethod
    def of(cls, ident: int, kind: str, messages: Sequence[InboundMessage]) -> SubmitBatch:
        """The columns of a non-empty batch."""
        topics, partitions, offsets, _, values, timestamps = zip(*messages, strict=True)
        return cls(ident, kind, topics, partitions, offsets, values, timestamps)

    def messages(self) -> list[InboundMessage]:
        """The batch again, in order, without keys."""
        columns = (self.topics, self.partitions, self.offsets)
        rows = zip(*columns, itertools.repeat(None), self.values, self.timestamps)
        return list(map(InboundMessage._make, rows))


@dataclass(frozen=True)
class MetricsRequest:
    """Answered with the pipeline process's metric families (`list[Metric]`)."""

    ident: int


@dataclass(frozen=True)
class ReportRequest:
    """A report's SQL on the store's thread; answered with (columns, rows)."""

    ident: int
    sql: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class VerifyRequest:
    """Verify the audit store on its thread; answered with a `VerifyReport`."""

    ident: int
    options: VerifyOptions = field(default_factory=VerifyOptions)


@dataclass(frozen=True)
class ChainsRequest:
    """The partitions of `chains` were assigned to this worker (`take`: read their heads from the
    store) or revoked (`release`: write no more of their records); answered with None once done."""

    ident: int
    chains: tuple[str, ...]
    take: bool


@dataclass(frozen=True)
class LoadLedger:
    """Load consent records into the pipeline's consent ledger (the Faust table, recovered at start-up
    or after a rebalance): `replace` empties it first (the first chunk of a snapshot); answered with
    the ledger's size once loaded. Ordered with the batches: those submitted after it read it."""

    ident: int
    records: tuple[Entry, ...]
    replace: bool


@dataclass(frozen=True)
class StopWrites:
    """Stop retrying failed inserts (shutdown): batches waiting on a store that is down then fail."""


@dataclass(frozen=True)
class Close:
    """Finish the batches in flight, close the store and exit. Nothing is read after it."""


Request: TypeAlias = MetricsRequest | ReportRequest | VerifyRequest | ChainsRequest | LoadLedger
ToPipeline: TypeAlias = SubmitBatch | Request | StopWrites | Close


# --- pipeline process → worker ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The store is open: batches and requests may come."""


@dataclass(frozen=True)
class StartFailed:
    """The store could not be opened; the process exits."""

    error: BaseException


@dataclass(frozen=True)
class Routed:
    """A batch is decided: where each of its records goes (its audit rows are being written)."""

    ident: int
    routes: Routes


@dataclass(frozen=True)
class Written:
    """A batch's audit rows are durable."""

    ident: int
    result: BatchResult


@dataclass(frozen=True)
class Failed:
    """A batch failed: before `Routed` (not decided: nothing written) or after it (not written)."""

    ident: int
    error: BaseException


@dataclass(frozen=True)
class Reply:
    """The answer to a `Request`: its value, or the error it raised."""

    ident: int
    value: object
    error: BaseException | None


Startup: TypeAlias = Ready | StartFailed
ToWorker: TypeAlias = Routed | Written | Failed | Reply


def is_startup(message: object) -> TypeGuard[Startup]:
    return isinstance(message, Startup)


def is_to_pipeline(message: object) -> TypeGuard[ToPipeline]:
    return isinstance(message, ToPipeline)


def is_to_worker(message: object) -> TypeGuard[ToWorker]:
    return isinstance(message, ToWorker)
