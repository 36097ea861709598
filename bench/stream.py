"""Stream benchmark: the worker's end-to-end events/s against a no-op Faust agent, in one run.

The parent process starts the embedded broker (librdkafka's mock cluster), creates the three input
topics with --partitions partitions each, and produces --events records of the generated mix
(Avro single-object encoded). Then, one after the other so they do not share the CPU, it runs in
subprocesses against the same topics and partitions, each with its own consumer group:

- `noop`: three Faust agents (one per input topic) that take batches the way the worker does
  (`noack_take`, same size and time limits) and only acknowledge them;
- `noop-iter`: three agents doing `async for event in stream: pass`;
- `full`: the real worker runtime: decode, validate, decide, forward to the gate topics, dead
  letters, audit rows into chDB, acknowledge after durability.

Each run is timed from the end of its first batch to its last event, counting only the events after
that first batch (start-up, the group join and the first batch are excluded, the same way for all).
The ratio uses the faster of the two no-op baselines. Target (issue 3): full >= 70% of no-op.
For the no-op and the full run it also prints the CPU time per event and the cores kept busy (CPU
over wall time; for the full run, its worker process and its pipeline process together). The no-op
stays near one core of two (1.1): it is bound by its interpreter's GIL (Faust's event loop and its
consumer thread take turns), not by the machine. The full run keeps ~1.4 busy with the pipeline in
its second process, and kept 1.2-1.35 with everything in one process
(FLOWAUDIT_PIPELINE_PROCESS=false runs it that way).

The default run is long enough for a steady state: batches are cut by time, so in a short run the
last partial batch and the first merges of the audit store weigh on the result (60,000 events with
1 s batches gave ratios anywhere from 0.54 to 0.92; 120,000 events vary by about ±0.1 around
the median, so compare medians of several runs).
The mock cluster keeps ~5 MB per partition, so --events must fit (the default does: ~9,000 events
of ~280 bytes per input partition).

With --consents the input is the generator's whole stream, its consent events (~10%) among the
--events records: the worker keeps them in its consent ledger (the Faust table and the pipeline's
copy) and decides the flows with it; the no-op agents read the consent topic too. Issue 14 asks for
the ratio with consents to stay within 10% of the ratio without them.

Every run also reports its CPU per event by process (`cpu_us_per_event_by_process`: the no-op's one
process; the full run's `worker`, Faust's, and `pipeline`, the second process of
streams/pipeline_process.py; the embedded broker, in this parent process, is never counted) and
whether every event was written (`full_pipeline_every_event_written`: decided events plus dead
letters cover the input, and the store, counted by a reader after the run, holds the rows written).

--profile [FILE] samples the full run's two processes with py-spy over its timed part
(`bench/profiling.py`) and prints where the CPU went, by part of the pipeline and by thread.

--peers runs flowaudit's worker, the same pipeline on quix-streams (`bench/peers/quix_peer.py`, from
its own environment `.venv-peers`: `make peers-venv`) and the no-op Faust agent on the same input,
interleaved (full, quix, no-op, --pairs times), each with a consumer group and a store of its own,
and prints events/s, CPU µs per event and whether every event was written, run by run.

Usage: python bench/stream.py [--events 120000] [--partitions 8] [--consents] [--profile [FILE]]
       python bench/stream.py --peers [--pairs 3] [--events 120000] [--partitions 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import profiling

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent


def _settings(bootstrap: str, data_dir: str, group: str) -> Any:
    from flowaudit.common.settings import Settings

    return Settings(
        kafka_url=f"kafka://{bootstrap}",
        data_dir=Path(data_dir),
        consumer_group=f"{group}-{os.getpid()}",  # a fresh group per run: it reads from the start
        metrics_port=0,
        web_port=0,
    )


def run_noop(bootstrap: str, events: int, data_dir: str, iterate: bool) -> dict[str, Any]:
    import faust

    from flowaudit.common.tuning import tune_process
    from flowaudit.runtime import make_worker

    tune_process()  # the same process tuning as the worker, so the comparison is fair
    settings = _settings(bootstrap, data_dir, "bench-noop-iter" if iterate else "bench-noop")
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{bootstrap}",
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        datadir=str(Path(data_dir) / "faust-noop"),
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=max(4096, settings.batch_max_rows * 2),
        stream_wait_empty=False,
        autodiscover=False,
    )
    clock = RunClock(events, {"noop": time.process_time})
    worker = make_worker(app, "ERROR")

    def seen(count: int) -> None:
        if clock.saw(count):
            clock.stopping = asyncio.ensure_future(worker.stop())

    from flowaudit.domain.kinds import INPUT_KINDS
    from flowaudit.streams.app import input_topic

    for topic_name in (input_topic(settings, kind) for kind in INPUT_KINDS):  # the consent topic too
        topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")
        if iterate:

            async def agent(stream: Any) -> None:
                async for _ in stream:
                    seen(1)

        else:

            async def agent(stream: Any) -> None:
                async for batch in stream.noack_take(
                    settings.batch_max_rows, within=settings.batch_max_seconds
                ):
                    for event in batch:
                        event.ack()
                    seen(len(batch))

        app.agent(topic, name=f"noop.{topic_name}")(agent)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return clock.result()


class RunClock:
    """Times a run from the end of its first batch to its last event, in wall-clock and CPU seconds.

    CPU over wall time is the number of cores the run kept busy (the run's process, and for the full
    run its pipeline process; the broker runs in the parent): a run near 1.0 on a 2-core machine is
    bound by one interpreter's GIL, not by the CPU. `parts` names each process's CPU clock, so the
    result also gives the CPU per event of each (`cpu_us_per_event_by_process`).
    """

    def __init__(self, events: int, parts: dict[str, Callable[[], float]] | None = None) -> None:
        self.events = events
        self.parts = parts or {"process": time.process_time}
        self.count = 0
        self.first_count = 0
        self.first: tuple[float, dict[str, float]] | None = None
        self.last: tuple[float, dict[str, float]] | None = None
        self.stopping: Any = None

    def stamp(self) -> tuple[float, dict[str, float]]:
        return time.perf_counter(), {name: clock() for name, clock in self.parts.items()}

    def saw(self, count: int) -> bool:
        """Count `count` more events; True once, when the last expected event has been seen."""
        self.count += count
        if self.first is None:
            self.first, self.first_count = self.stamp(), self.count
        if self.count >= self.events and self.last is None:
            self.last = self.stamp()
            return True
        return False

    def result(self) -> dict[str, Any]:
        if self.first is None or self.last is None:
            raise SystemExit(f"the run saw {self.count} of {self.events} events")
        timed = self.count - self.first_count
        elapsed = self.last[0] - self.first[0]
        by_part = {name: self.last[1][name] - self.first[1][name] for name in self.parts}
        cpu = sum(by_part.values())
        return {
            "events": self.count,
            "timed_events": timed,
            "seconds": elapsed,
            "events_per_second": timed / elapsed,
            "cpu_us_per_event": cpu / timed * 1e6,
            "cpu_us_per_event_by_process": {name: spent / timed * 1e6 for name, spent in by_part.items()},
            "cores_busy": cpu / elapsed,
        }


def run_full(
    bootstrap: str, events: int, data_dir: str, group: str, profile: str | None = None
) -> dict[str, Any]:
    """The worker's runtime on the input; with `profile`, py-spy samples both of its processes over
    the timed part of the run (raw stacks into that file) and their threads' CPU is read too."""
    from flowaudit.common.tuning import tune_process
    from flowaudit.runtime import build_runtime, make_worker

    tune_process()
    # the group the parent created the consent ledger's changelog for (the worker creates no topics)
    settings = _settings(bootstrap, data_dir, "bench-full").model_copy(update={"consumer_group": group})
    clock = RunClock(events, {"worker": time.process_time})
    totals = {"written": 0, "dead_lettered": 0}
    holder: dict[str, Any] = {}
    sampler = profiling.Sampler(profile) if profile else None

    def observe(kind: str, result: Any) -> None:
        totals["written"] += result.written
        totals["dead_lettered"] += result.dead_lettered
        first = clock.first is None
        last = clock.saw(result.consumed)
        if sampler is not None and first:
            sampler.start(holder["pids"])
        if last:
            if sampler is not None:
                sampler.stop()
            clock.stopping = asyncio.ensure_future(holder["worker"].stop())

    runtime = build_runtime(settings, observer=observe, web_enabled=False)
    pid = runtime.pipeline_pid
    holder["pids"] = {"worker": os.getpid()}
    if pid is not None:
        clock.parts["pipeline"] = functools.partial(_process_cpu_seconds, pid)
        holder["pids"]["pipeline"] = pid
    holder["worker"] = make_worker(runtime.app, "ERROR")
    try:
        holder["worker"].execute_from_commandline()
    except SystemExit:
        pass
    finally:
        runtime.close()
    result = clock.result() | totals
    result["store_rows"] = store_rows(settings.resolved_clickhouse_url, runtime.policy, settings.data_dir)
    if sampler is not None:
        result["profile"] = sampler.finish(result["timed_events"])
    return result


def store_rows(url: str, policy: Any, data_dir: Path) -> int:
    """The rows in a run's store (audit rows and consent rows), counted after the run by a reader of
    its own: the check that every decided record was written."""
    from flowaudit.sinks.clickhouse import AuditStore

    store = AuditStore(url, policy, bytes(32))
    store.connect(writer=False)
    consents = store.table.replace("audit_events", "consent_events")
    try:
        _, rows = store.query(
            f"SELECT (SELECT count() FROM {store.table}) + (SELECT count() FROM {consents})"
        )
        return int(rows[0][0])
    finally:
        store.close()


def _process_cpu_seconds(pid: int) -> float:
    """User and system CPU time of another process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def produce(bootstrap: str, events: int, consents: bool) -> int:
    """Send `events` records of the generated mix: flows only, or (`consents`) the generator's stream
    with its consent events (~10%) among them. Returns how many are consents."""
    from flowaudit.common.settings import Settings
    from flowaudit.domain.policy import load_policy
    from flowaudit.generator import EventGenerator
    from flowaudit.policy import DEFAULT_POLICY_DIR
    from flowaudit.produce import EventProducer

    policy = load_policy(DEFAULT_POLICY_DIR)
    producer = EventProducer(bootstrap, Settings(metrics_port=0), policy)
    generator = EventGenerator(policy, seed=8)
    for raw in generator.records(events) if consents else generator.events(events):
        producer.send(raw)
    producer.close()
    return int(producer.sent_by_kind.get("consent", 0))


PEER_SCRIPT = HERE.parent / "peers" / "quix_peer.py"


def peers_python() -> str:
    """The interpreter of the quix-streams peer's own environment (see bench/peers/quix_peer.py)."""
    python = os.environ.get("FLOWAUDIT_PEERS_PYTHON") or str(REPO / ".venv-peers" / "bin" / "python")
    if not Path(python).exists():
        raise SystemExit(f"bench: --peers needs the quix-streams environment {python}: run `make peers-venv`")
    return python


def child(
    role: str, bootstrap: str, events: int, data_dir: str, group: str, profile: str | None = None
) -> dict[str, Any]:
    """One run in a subprocess (`role`: noop, noop-iter, full, or quix, the peer); its JSON result."""
    common = ["--bootstrap", bootstrap, "--events", str(events), "--data-dir", data_dir, "--group", group]
    if role == "quix":
        command = [peers_python(), str(PEER_SCRIPT), *common]
    else:
        command = [sys.executable, str(HERE), "--role", role, *common]
        if profile:
            command += ["--profile", profile]
    result = subprocess.run(command, capture_output=True, timeout=900, check=False, env=dict(os.environ))
    if result.returncode != 0:
        raise SystemExit(f"{role} run failed:\n{result.stderr.decode()[-3000:]}")
    line = result.stdout.decode().strip().splitlines()[-1]
    parsed: dict[str, Any] = json.loads(line)
    parsed["load_average"] = [round(load, 2) for load in os.getloadavg()]  # at the run's end
    return parsed


def _rounded_parts(run: dict[str, Any]) -> dict[str, float]:
    return {name: round(value, 1) for name, value in run["cpu_us_per_event_by_process"].items()}


def all_written(run: dict[str, Any], events: int) -> bool:
    """Every event of the input decided and accounted for: an audit row in the store or a dead letter."""
    return bool(run["written"] + run["dead_lettered"] >= events and run["store_rows"] == run["written"])


def run_peers(broker: Any, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """flowaudit, the quix-streams peer and the no-op Faust agent, interleaved: F Q N, `--pairs` times,
    each run with a consumer group (and for F and Q a store) of its own, on the same input."""
    from flowaudit.streams.app import ledger_changelog_topic

    runs: dict[str, list[dict[str, Any]]] = {"full": [], "quix": [], "noop": []}
    for number in range(1, args.pairs + 1):
        for role in runs:
            group = f"bench-{role}-{number}-{os.getpid()}"
            data_dir = str(Path(tmp) / f"{role}-{number}")
            Path(data_dir).mkdir()
            if role == "full":
                broker.create_topics([ledger_changelog_topic(group)], args.partitions)
            run = child(role, broker.bootstrap, args.events, data_dir, group)
            if role != "noop":
                run["all_written"] = all_written(run, args.events)
            runs[role].append(run)
            print(_run_line(role, number, run), file=sys.stderr, flush=True)
    return {
        "events": args.events,
        "partitions_per_topic": args.partitions,
        "pairs": args.pairs,
        "runs": {
            role: [
                {
                    "events_per_second": round(run["events_per_second"]),
                    "cpu_us_per_event": round(run["cpu_us_per_event"], 1),
                    "cpu_us_per_event_by_process": _rounded_parts(run),
                    "cores_busy": round(run["cores_busy"], 2),
                    "all_written": run.get("all_written"),
                    "load_average": run["load_average"],
                }
                for run in role_runs
            ]
            for role, role_runs in runs.items()
        },
        "medians": {
            role: {
                "events_per_second": round(statistics.median(r["events_per_second"] for r in role_runs)),
                "cpu_us_per_event": round(statistics.median(r["cpu_us_per_event"] for r in role_runs), 1),
            }
            for role, role_runs in runs.items()
        },
    }


def _run_line(role: str, number: int, run: dict[str, Any]) -> str:
    written = ""
    if "all_written" in run:
        written = f", every event written: {'yes' if run['all_written'] else 'NO'}"
    parts = ", ".join(f"{name} {value}" for name, value in _rounded_parts(run).items())
    return (
        f"{role:>5} #{number}: {run['events_per_second']:,.0f} events/s, "
        f"{run['cpu_us_per_event']:.1f} µs CPU/event ({parts}), {run['cores_busy']:.2f} cores{written}; "
        f"load {run['load_average']}"
    )


def format_peers(report: dict[str, Any]) -> str:
    """The interleaved runs as a table: one line per run, then the medians."""
    lines = [
        "| run | system | events/s | CPU µs/event | per process | every event written | load average |",
        "|---|---|---:|---:|---|---|---|",
    ]
    names = {"full": "flowaudit worker", "quix": "quix-streams peer", "noop": "no-op Faust agent"}
    for number in range(report["pairs"]):
        for role, role_runs in report["runs"].items():
            run = role_runs[number]
            written = {True: "yes", False: "**no**", None: "—"}[run["all_written"]]
            parts = ", ".join(f"{name} {value}" for name, value in run["cpu_us_per_event_by_process"].items())
            load = " ".join(map(str, run["load_average"]))
            lines.append(
                f"| {number + 1} | {names[role]} | {run['events_per_second']:,} "
                f"| {run['cpu_us_per_event']} | {parts} | {written} | {load} |"
            )
    for role, median in report["medians"].items():
        rate, cpu = median["events_per_second"], median["cpu_us_per_event"]
        lines.append(f"| median | {names[role]} | {rate:,} | {cpu} | | | |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--role", choices=("noop", "noop-iter", "full"))
    parser.add_argument("--bootstrap")
    parser.add_argument("--data-dir")
    parser.add_argument("--group", help="the full run's consumer group (its ledger changelog exists)")
    parser.add_argument(
        "--consents", action="store_true", help="the generator's consents among the events (~10%%)"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="flowaudit, the quix-streams peer and the no-op Faust agent, interleaved (--pairs rounds)",
    )
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the --peers runs (default 3)")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="bench-stream-profile.txt",
        metavar="FILE",
        help="sample the full run with py-spy (raw stacks into FILE) and print where its CPU goes",
    )
    args = parser.parse_args()
    if args.peers and args.consents:
        parser.error("--peers runs flows only (the quix-streams peer does not read the consent topic)")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    if args.role:
        # the runs' own logging goes to stderr; stdout carries one JSON line
        if args.role == "full":
            result = run_full(args.bootstrap, args.events, args.data_dir, args.group, args.profile)
        else:
            result = run_noop(args.bootstrap, args.events, args.data_dir, iterate=args.role == "noop-iter")
        print(json.dumps(result))
        return

    from flowaudit.broker import EmbeddedBroker
    from flowaudit.common.settings import Settings
    from flowaudit.runtime import all_topics

    if args.peers:
        peers_python()  # fail before the input is produced
    profile = str(Path(args.profile).resolve()) if args.profile else None
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        group = f"bench-full-{os.getpid()}"
        broker.create_topics(all_topics(Settings(metrics_port=0, consumer_group=group)), args.partitions)
        started = time.perf_counter()
        consents = produce(broker.bootstrap, args.events, args.consents)
        produced_in = time.perf_counter() - started
        if args.peers:
            peers = run_peers(broker, args, tmp)
            print(json.dumps(peers, indent=2))
            print(format_peers(peers))
            return
        noop = child("noop", broker.bootstrap, args.events, tmp, group)
        noop_iter = child("noop-iter", broker.bootstrap, args.events, tmp, group)
        full = child("full", broker.bootstrap, args.events, tmp, group, profile)
    print(json.dumps(report(args, consents, produced_in, noop, noop_iter, full), indent=2))
    if "profile" in full:
        print(profiling.format_profile(full["profile"]))


def report(
    args: argparse.Namespace,
    consents: int,
    produced_in: float,
    noop: dict[str, Any],
    noop_iter: dict[str, Any],
    full: dict[str, Any],
) -> dict[str, Any]:
    """The default run's summary (the README and docs/performance.md quote its keys)."""
    baseline = max(noop["events_per_second"], noop_iter["events_per_second"])
    return {
        "events": args.events,
        "consent_events": consents,
        "partitions_per_topic": args.partitions,
        "produce_seconds": round(produced_in, 1),
        "noop_take_events_per_second": round(noop["events_per_second"]),
        "noop_iterate_events_per_second": round(noop_iter["events_per_second"]),
        "full_pipeline_events_per_second": round(full["events_per_second"]),
        "full_pipeline_audit_rows": full["written"],
        "full_pipeline_every_event_written": all_written(full, args.events),
        "cpu_us_per_event": {
            "noop_take": round(noop["cpu_us_per_event"], 1),
            "full_pipeline": round(full["cpu_us_per_event"], 1),
        },
        "cpu_us_per_event_by_process": {"full_pipeline": _rounded_parts(full)},
        "cores_busy": {
            "noop_take": round(noop["cores_busy"], 2),
            "full_pipeline": round(full["cores_busy"], 2),
        },
        "ratio_full_to_best_noop": round(full["events_per_second"] / baseline, 3),
        "target_ratio": 0.7,
        "load_average": full["load_average"],
    }


if __name__ == "__main__":
    main()
