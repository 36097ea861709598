"""bench/profiling.py: py-spy's raw stacks sorted into the pipeline's parts (no profiler needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import profiling  # noqa: E402

RAW = REPO / "tests" / "data" / "bench" / "pyspy_raw.txt"


def test_samples_go_to_the_innermost_frame_that_names_a_part() -> None:
    samples = profiling.read_raw(RAW)
    assert set(samples) == {(100, 100), (200, 200), (200, 201), (200, 202)}  # (process, thread)
    worker, main, store = samples[(100, 100)], samples[(200, 200)], samples[(200, 201)]
    assert worker["decode (domain/codec, fastavro)"] == 7  # fastavro under the codec, inside asyncio
    assert worker[profiling.LOOP[0]] == 3
    assert worker["Faust/mode/aiokafka machinery"] == 5  # a logging call inside aiokafka is aiokafka's
    assert worker["gate producer (streams/publish, aiokafka/confluent producer)"] == 5
    assert store["row building (sinks/audit, sinks/encoding)"] == 5  # prepare's own lines too
    assert store["insert (chDB, clickhouse_connect)"] == 5
    assert main["decide (domain/decision, domain/policy/checks)"] == 8
    assert main[profiling.OTHER] == 1  # only the standard library on the stack
    assert samples[(200, 202)]["pipe between processes (streams/pipe)"] == 1
    assert sum(sum(counts.values()) for counts in samples.values()) == 40  # the malformed line skipped


def test_each_threads_measured_cpu_is_shared_out_by_its_samples() -> None:
    sampler = profiling.Sampler.__new__(profiling.Sampler)
    sampler.output, sampler.pids = RAW, {"worker": 100, "pipeline": 200}
    sampler.process = None
    assert sampler.finish(1000) == {}  # never started: nothing to report
    sampler.process = _Finished()
    sampler.threads_at_start = {
        "worker": {100: ("python", 1.0)},
        "pipeline": {200: ("python", 2.0), 201: ("python", 0.0), 203: ("MergeMutate", 0.0)},
    }
    sampler.threads_at_end = {  # seconds: worker 0.02; pipeline main 0.009, store 0.004, merges 0.003
        "worker": {100: ("python", 1.02)},
        "pipeline": {200: ("python", 2.009), 201: ("Unknown", 0.004), 203: ("MergeMutate", 0.003)},
    }
    profile = sampler.finish(1000)  # µs per event = seconds * 1000
    rows = {row["category"]: row for row in profile["categories"]}
    assert rows["decode (domain/codec, fastavro)"]["worker_us_per_event"] == 7.0  # 7 of 20 samples
    assert rows[profiling.LOOP[0]]["worker_us_per_event"] == 3.0
    assert rows["decide (domain/decision, domain/policy/checks)"]["pipeline_us_per_event"] == 8.0
    assert rows["insert (chDB, clickhouse_connect)"]["pipeline_us_per_event"] == 2.0  # 5 of 10: 0.004 s
    assert rows["insert (chDB, clickhouse_connect)"]["pipeline_samples"] == 5
    assert rows[profiling.NATIVE]["pipeline_us_per_event"] == 3.0  # no samples: merges
    assert profile["threads_us_per_event"]["pipeline"] == {"python": 9.0, "Unknown": 4.0, "MergeMutate": 3.0}
    text = profiling.format_profile(profile)
    assert "| asyncio (the event loop itself) | 3 | 3.0 | 0 | 0.0 |" in text
    assert "pipeline: python 9.0, Unknown 4.0, MergeMutate 3.0" in text


class _Finished:
    def wait(self, timeout: float) -> int:
        return 0


@pytest.mark.parametrize(
    ("frames", "category"),
    [
        (["run (quixstreams/app.py:1)", "__call__ (bench/peers/quix_peer.py:9)"],
         "flowaudit glue (agents, batches, metrics)"),
        (["run (quixstreams/app.py:1)"], "quix-streams machinery"),
        (["MethodQueue.call (mode/threads.py:1)", "call_soon_threadsafe (asyncio/base_events.py:1)"],
         "Faust/mode/aiokafka machinery"),
        (["produce_row (quixstreams/rowproducer.py:1)", "produce (quixstreams/internal_producer.py:1)"],
         "gate producer (streams/publish, aiokafka/confluent producer)"),
        (["agent (faust/agents/agent.py:1)", "observe (flowaudit/streams/measure.py:1)"],
         "flowaudit glue (agents, batches, metrics)"),
    ],
)  # fmt: skip
def test_category_of_a_stack(frames: list[str], category: str) -> None:
    assert profiling.category_of(frames) == category
