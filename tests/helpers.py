"""Helpers for integration tests: worker subprocesses, topic readers, metric scrapes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.2,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll `condition` until it is true; on a timeout, fail with what was awaited and `explain()`
    (for example the key lines of the workers' logs: CI keeps only the failure's message)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


# log lines that tell a group's story: membership, assignments, table recovery, trouble
_KEY_LOG_LINES = (
    "Joined group",
    "Revoking previously",
    "Setting newly assigned",
    "Recovery]: Resuming",
    "Recovery]: Worker ready",
    "No event received",
    "Remaining for active",
    "consent ledger recovered",
    "Signal received",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "STOPPING",
    "Traceback",
)


def key_log_lines(name: str, text: str, limit: int = 40) -> str:
    """The lines of a worker log that tell what its group did (the last `limit` of them)."""
    lines = [line.strip() for line in text.splitlines() if any(key in line for key in _KEY_LOG_LINES)]
    shown = "\n  ".join(line[:220] for line in lines[-limit:])
    return f"--- {name}: {len(lines)} key lines, last {min(limit, len(lines))}:\n  {shown}"


def story_of(workers: list[WorkerProcess], limit: int = 40) -> Callable[[], str]:
    """An `explain` for `wait_for`: the key log lines of every worker started so far."""
    return lambda: "\n".join(worker.key_lines(limit) for worker in workers)


def worker_env(broker_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWAUDIT_")}
    env.update(
        FLOWAUDIT_KAFKA_URL=broker_url,
        FLOWAUDIT_DATA_DIR=str(data_dir),
        FLOWAUDIT_METRICS_PORT=str(free_port()),
        FLOWAUDIT_WEB_PORT=str(free_port()),
        FLOWAUDIT_BATCH_MAX_SECONDS="0.2",
        FLOWAUDIT_TOPIC_PARTITIONS="2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    """`flowaudit worker` (or another command) in a subprocess; always stopped by the test."""

    def __init__(self, env: dict[str, str], log_path: Path, command: list[str] | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.command = command or [sys.executable, "-m", "flowaudit.cli", "worker"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log, cwd=REPO)
        wait_for(lambda: self.metric_text() is not None or self.exited(), 60, "the worker's metrics endpoint")
        if self.exited():
            raise AssertionError(f"worker exited early:\n{self.log()}")
        return self

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def key_lines(self, limit: int = 40) -> str:
        """What this worker's group did, from its whole log (see `key_log_lines`)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        state = "running" if self.process is not None and self.process.poll() is None else "exited"
        code = "" if state == "running" or self.process is None else f" ({self.process.returncode})"
        story = key_log_lines(f"{self.log_path.name}, {state}{code}", text, limit)
        if os.environ.get("FLOWAUDIT_TEST_STACKS") and state == "running" and self.process is not None:
            # a diagnostic for a hang (pip install py-spy): the stacks of the worker and its children
            dump = subprocess.run(
                ["py-spy", "dump", "--subprocesses", "--locals", "--pid", str(self.process.pid)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            Path(f"{self.log_path}.stacks").write_text(dump.stdout + dump.stderr)
            story += f"\n  (stacks in {self.log_path}.stacks)"
        return story

    def metric_text(self) -> str | None:
        try:
            port = self.env["FLOWAUDIT_METRICS_PORT"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        text = self.metric_text() or ""
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric_name = head.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"worker did not stop within {timeout} s:\n{self.log()}") from None

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def run_cli(
    env: dict[str, str], *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "flowaudit.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    """Every record of `topic` from the start, waiting until at least `expected` are there."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        api_version=(2, 5),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
            if len(records) >= expected:
                break
        return records
    finally:
        consumer.close()


class SteadyProducer(threading.Thread):
    """Sends generated events at a steady rate with `flowaudit produce`'s producer; keeps their ids."""

    def __init__(self, bootstrap: str, settings: Any, count: int, rate: float, seed: int) -> None:
        from flowaudit.domain.policy import load_policy
        from flowaudit.generator import EventGenerator
        from flowaudit.produce import EventProducer

        super().__init__(daemon=True)
        policy = load_policy(settings.policy_dir)
        self.producer = EventProducer(bootstrap, settings, policy)
        self.events = list(EventGenerator(policy, seed=seed).events(count))
        self.rate = rate
        self.ids: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        for number, raw in enumerate(self.events, start=1):
            self.ids.add(self.producer.send(raw).event_id)
            delay = started + number / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.producer.close()
        self.done.set()


# Debian's Chromium, for the tests that load a page in a real browser (scripts/install-system-tools.sh)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(
    profile: Path, *arguments: str, window: str = "1500,950"
) -> subprocess.CompletedProcess[str]:
    """Headless Chromium in a session of its own, every process of which is killed afterwards."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # the tests run as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={window}",
        "--virtual-time-budget=15000",  # virtual time waits while the page's fetch is pending
        *arguments,
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the browser's helpers too
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
