"""Where a stream run's CPU goes: py-spy's samples of its processes, sorted into the pipeline's parts.

`Sampler` starts `py-spy record` (PyPI `py-spy`, the project's `bench` extra) on the running
process and its subprocesses at the end of the first batch, stops it at the last event, and reads
the CPU of every thread of the named processes at both moments (`/proc/<pid>/task`). `finish`
sorts the samples (raw stacks, py-spy's `--format raw`) into `CATEGORIES`: each stack goes to the
first category that one of its frames matches, looking from the innermost frame out, so time in
the standard library or a C extension counts for the code that called it (a `logging` call inside
aiokafka is aiokafka's, a `hashlib` call in the row builder is row building). asyncio counts as
the event loop's own when the innermost frames reach the loop's core (polling, dispatching) before
any other category; asyncio called from Faust, mode or aiokafka counts as theirs.

From samples to microseconds: every thread's CPU over the window is measured (`/proc`), and a
sampled thread's CPU is shared out among the categories of its samples (py-spy's `--threads`
names each sample's thread id). Threads with no samples are native ones py-spy cannot see (chDB's
merges and pools, librdkafka's) and get a line of their own, so the table adds up to the
processes' measured CPU per event (less threads that ended inside the window).
Sampling costs CPU itself (py-spy runs on the same two cores, `--nonblocking` so as not to stop the
processes), so a profiled run is a little slower than the others: compare its shares, not its rate.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

RATE = 100  # samples per second and thread

# (category, substrings of a frame: "function (path/file.py:line)"); the first that matches wins
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decode (domain/codec, fastavro)", ("domain/codec.py", "fastavro/")),
    ("validate (domain/events)", ("domain/events.py", "domain/kinds.py", "domain/fields.py")),
    (
        "decide (domain/decision, domain/policy/checks)",
        (
            "domain/decision.py",
            "domain/policy/",
            "domain/classify.py",
            "domain/consent.py",
            "domain/ledger.py",
        ),
    ),
    ("decision header, routes (streams/route)", ("streams/route.py", "streams/deadletter.py")),
    (
        "row building (sinks/audit, sinks/encoding)",
        ("sinks/audit.py", "sinks/encoding.py", "sinks/identity.py", "AuditStore.prepare ", "pyarrow/"),
    ),
    ("insert (chDB, clickhouse_connect)", ("clickhouse_connect/", "chdb/", "AuditStore.insert ")),
    (
        "gate producer (streams/publish, aiokafka/confluent producer)",
        ("streams/publish.py", "aiokafka/producer/", "confluent_kafka/", "quixstreams/internal_producer.py"),
    ),
    ("pipe between processes (streams/pipe)", ("streams/pipe.py", "multiprocessing/connection.py")),
    ("Faust/mode/aiokafka machinery", ("faust/", "mode/", "aiokafka/", "venusian/", "aiohttp/", "yarl/")),
    ("quix-streams machinery", ("quixstreams/",)),
    (
        "flowaudit glue (agents, batches, metrics)",
        ("streams/", "sinks/", "flowaudit/", "common/", "prometheus_client/", "peers/quix_peer.py"),
    ),
)
# the event loop's own work: a stack whose innermost frames, up to the first one of a category above,
# pass through the loop's core (polling, dispatching). asyncio called from Faust, mode or aiokafka
# (call_soon_threadsafe from mode's thread queue, a transport's write) is theirs.
LOOP = (
    "asyncio (the event loop itself)",
    ("._run_once (", ".run_forever (", "Handle._run (", "selectors.py"),
)
OTHER = "other"
NATIVE = "threads py-spy did not sample (native: chDB's engine, librdkafka)"


def category_of(frames: list[str]) -> str:
    """The category of one sampled stack (outermost frame first, as py-spy writes them)."""
    for frame in reversed(frames):
        if any(needle in frame for needle in LOOP[1]):
            return LOOP[0]
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return OTHER


_PROCESS_FRAMES = re.compile(r'^((?:process \d+:".*?";)+)')
_THREAD_FRAME = re.compile(r"^thread \((\d+)\)")


def read_raw(path: Path) -> dict[tuple[int, int], Counter[str]]:
    """py-spy's raw output with `--subprocesses --threads` (`process PID:"cmd";` for each process
    down to the sampled one, `thread (TID): name;`, the frames, then the count) -> samples per
    category per (process id, thread id)."""
    samples: dict[tuple[int, int], Counter[str]] = defaultdict(Counter)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        pid = tid = 0
        if processes := _PROCESS_FRAMES.match(stack):  # the commands may hold ';': cut them off first
            pid = int(processes.group(1).rsplit("process ", 1)[1].split(":", 1)[0])
            stack = stack[processes.end() :]
        frames = stack.split(";")
        if frames and (thread := _THREAD_FRAME.match(frames[0])):
            tid = int(thread.group(1))
            frames = frames[1:]
        samples[(pid, tid)][category_of(frames)] += int(count)
    return samples


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each thread of a process, with its name (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    threads: dict[int, tuple[str, float]] = {}
    task_dir = Path(f"/proc/{pid}/task")
    for task in task_dir.iterdir() if task_dir.exists() else ():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return threads


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("bench: --profile needs py-spy (pip install -e '.[bench]')")
    return found


class Sampler:
    """py-spy on this process and its subprocesses over the timed part of a run (module docstring)."""

    def __init__(self, output: str) -> None:
        self.output = Path(output)
        self.command = _py_spy()
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: dict[str, int] = {}
        self.threads_at_start: dict[str, dict[int, tuple[str, float]]] = {}
        self.threads_at_end: dict[str, dict[int, tuple[str, float]]] = {}

    def start(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.threads_at_start = {name: thread_cpu(pid) for name, pid in pids.items()}
        self.process = subprocess.Popen(
            [
                self.command, "record", "--pid", str(os.getpid()), "--subprocesses", "--threads",
                "--nonblocking", "--rate", str(RATE), "--format", "raw", "--output", str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        self.threads_at_end = {name: thread_cpu(pid) for name, pid in self.pids.items()}
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT

    def finish(self, timed_events: int) -> dict[str, Any]:
        """The profile of the run: per process, the samples by category and the estimated µs per
        event of each (every sampled thread's measured CPU shared out by its samples; threads with
        no samples, native ones, on a line of their own), and the CPU per event of its threads."""
        if self.process is None:
            return {}
        self.process.wait(timeout=120)
        samples = read_raw(self.output) if self.output.exists() else {}
        table = {name: Counter[str]() for name in [*(c for c, _ in CATEGORIES), LOOP[0], OTHER, NATIVE]}
        counts = {name: Counter[str]() for name in table}
        for process, pid in self.pids.items():
            for tid, (_, seconds) in self._spent(process).items():
                sampled = samples.get((pid, tid))
                if not sampled:
                    table[NATIVE][process] += seconds
                    continue
                total = sum(sampled.values())
                for category, count in sampled.items():
                    table[category][process] += seconds * count / total
                    counts[category][process] += count
        scale = 1e6 / max(timed_events, 1)
        rows = [
            {"category": category}
            | {f"{p}_samples": counts[category][p] for p in self.pids}
            | {f"{p}_us_per_event": round(spent[p] * scale, 1) for p in self.pids}
            for category, spent in table.items()
        ]
        threads = {process: self._by_name(process, scale) for process in self.pids}
        return {"rate": RATE, "file": str(self.output), "categories": rows, "threads_us_per_event": threads}

    def _spent(self, process: str) -> dict[int, tuple[str, float]]:
        """CPU seconds of each thread of the process between start and stop, with its name."""
        start, end = self.threads_at_start.get(process, {}), self.threads_at_end.get(process, {})
        return {tid: (name, seconds - start.get(tid, (name, 0.0))[1]) for tid, (name, seconds) in end.items()}

    def _by_name(self, process: str, scale: float) -> dict[str, float]:
        spent: Counter[str] = Counter()
        for name, seconds in self._spent(process).values():
            spent[name] += seconds
        return {name: round(value * scale, 1) for name, value in spent.most_common()}


def format_profile(profile: dict[str, Any]) -> str:
    """The profile as a text table (for the terminal and docs/performance.md)."""
    processes = [key[: -len("_samples")] for key in profile["categories"][0] if key.endswith("_samples")]
    head = "".join(f" | {p} samples | {p} µs/event" for p in processes)
    lines = [f"| category{head} |", "|---" + "|---:" * 2 * len(processes) + "|"]
    for row in profile["categories"]:
        cells = "".join(f" | {row[f'{p}_samples']} | {row[f'{p}_us_per_event']}" for p in processes)
        lines.append(f"| {row['category']}{cells} |")
    lines.append("")
    lines.append("CPU per event by thread (µs; threads named by the process keep its name):")
    for process, threads in profile["threads_us_per_event"].items():
        listing = ", ".join(f"{name} {value}" for name, value in threads.items() if value >= 0.1)
        lines.append(f"  {process}: {listing}")
    return "\n".join(lines)
