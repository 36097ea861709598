"""The messages between the worker's process and the pipeline process (no process started here)."""

from __future__ import annotations

import pickle
from pathlib import Path

from flowaudit.domain.policy import Policy
from flowaudit.streams.messages import BatchResult, InboundMessage
from flowaudit.streams.pipe import (
    Close,
    Failed,
    MetricsRequest,
    PipelineConfig,
    PipelineProcessError,
    Ready,
    Reply,
    ReportRequest,
    Routed,
    StartFailed,
    StopWrites,
    SubmitBatch,
    VerifyRequest,
    Written,
    is_startup,
    is_to_pipeline,
    is_to_worker,
    portable,
)
from flowaudit.streams.route import Routes

BATCH = [
    InboundMessage("in.sharing", 1, 7, b"key", b"value", 1_700_000_000_000),
    InboundMessage("in.sharing", 0, 8, None, None, None),
]


def test_a_batch_crosses_as_columns_and_comes_back_without_keys() -> None:
    submitted = pickle.loads(pickle.dumps(SubmitBatch.of(3, "sharing", BATCH)))
    assert (submitted.ident, submitted.kind, submitted.values) == (3, "sharing", (b"value", None))
    assert submitted.messages() == [message._replace(key=None) for message in BATCH]


def test_each_direction_accepts_its_own_messages_only() -> None:
    to_pipeline = [
        SubmitBatch.of(0, "sharing", BATCH),
        MetricsRequest(1),
        ReportRequest(2, "SELECT 1", {"user": "u"}),
        VerifyRequest(3),
        StopWrites(),
        Close(),
    ]
    to_worker = [
        Routed(0, Routes([], [], [])),
        Written(0, BatchResult(consumed=2)),
        Failed(0, RuntimeError("x")),
        Reply(1, [], None),
    ]
    startup = [Ready(), StartFailed(RuntimeError("no store"))]
    for message in to_pipeline + to_worker + startup:
        assert pickle.loads(pickle.dumps(message)) is not message
    assert all(is_to_pipeline(m) and not is_to_worker(m) and not is_startup(m) for m in to_pipeline)
    assert all(is_to_worker(m) and not is_to_pipeline(m) and not is_startup(m) for m in to_worker)
    assert all(is_startup(m) and not is_to_worker(m) and not is_to_pipeline(m) for m in startup)
    assert not is_to_pipeline(("batch", 0)) and not is_to_worker(("done", 0, None))


class _Unpicklable(Exception):
    def __init__(self, handle: object) -> None:
        super().__init__("bad")
        self.handle = handle


def test_an_error_that_cannot_be_pickled_is_sent_as_its_description() -> None:
    plain = ValueError("plain")
    assert portable(plain) is plain
    sent = portable(_Unpicklable(lambda: None))
    assert isinstance(sent, PipelineProcessError) and "_Unpicklable: bad" in str(sent)


def test_the_config_sent_at_spawn_holds_values_not_the_settings(policy: Policy, tmp_path: Path) -> None:
    config = PipelineConfig(
        kinds=("sharing",),
        policy=policy,
        store_url=f"chdb://{tmp_path}",
        chain_key=b"k" * 32,
        insert_retry_max_seconds=1.0,
        invalid_ratio_limit=0.5,
        invalid_ratio_window=1000,
        loglevel=30,
    )
    assert b"Settings" not in pickle.dumps(config)
    assert pickle.loads(pickle.dumps(config)) == config
