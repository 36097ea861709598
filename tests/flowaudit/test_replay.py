"""`flowaudit replay` from the command line: formats, bad input (exit 2, one line), a held store."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli, wait_for

pytestmark = pytest.mark.integration
KEY = "replay-test-key-" * 2
WHAT_IF = str(REPO / "tests" / "data" / "policies" / "gb-adequacy-ended")


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWAUDIT_")}
    env.update(FLOWAUDIT_DATA_DIR=str(data_dir), FLOWAUDIT_CHAIN_KEY=KEY)
    return env


@pytest.fixture(scope="module")
def history_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose store holds tests/data/replay/history.jsonl (written by another process)."""
    data_dir = tmp_path_factory.mktemp("replay")
    done = subprocess.run(
        [sys.executable, "-m", "tests.sinks.replay_history", str(data_dir)],
        env=_env(data_dir),
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return data_dir


def test_json_table_and_csv(history_dir: Path) -> None:
    done = run_cli(_env(history_dir), "replay", "--policy", WHAT_IF, "--format", "json")
    assert done.returncode == 0, done.stderr.decode()
    answer = json.loads(done.stdout)
    assert answer["summary"]["changed"] == 4 and answer["summary"]["allowed_to_blocked"] == 1
    assert [r["recipient"] for r in answer["recipients"]] == ["Runna", "(platform)"]
    table = run_cli(_env(history_dir), "replay", "--policy", WHAT_IF).stdout.decode()
    assert "rows replayed 12  changed 4" in table and "transfer-without-safeguard  added" in table
    assert "subjects affected:" in table and "recipients affected:" in table
    spreadsheet = run_cli(_env(history_dir), "replay", "--policy", WHAT_IF, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(spreadsheet.stdout.decode())))
    assert sorted(row["event_id"][-1] for row in rows) == ["2", "3", "6", "8"]
    assert "changed 4" in spreadsheet.stderr.decode()  # the summary, beside the table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "no/such/dir"], "invalid policy: no/such/dir"),
        (["--policy", WHAT_IF, "--since", "2025-12-01", "--until", "2025-11-01"], "is after --until"),
        (["--policy", WHAT_IF, "--since", "yesterday"], "not an ISO-8601 date or time"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(history_dir: Path, args: list[str], message: str) -> None:
    done = run_cli(_env(history_dir), "replay", *args)
    assert done.returncode == 2 and done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_a_missing_store_is_an_error_and_nothing_is_created(tmp_path: Path) -> None:
    done = run_cli(_env(tmp_path / "typo"), "replay", "--policy", WHAT_IF)
    assert done.returncode == 2 and "there is no audit store" in done.stderr.decode()
    assert not (tmp_path / "typo").exists()


def test_a_store_held_by_another_process_says_what_to_do(tmp_path: Path) -> None:
    env = _env(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.sinks.replay_history", str(tmp_path), "--hold"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert holder.stdout is not None
        wait_for(lambda: holder.stdout.readline().startswith(b"written"), 60, "the store written")
        done = run_cli(env, "replay", "--policy", WHAT_IF)
    finally:
        holder.terminate()
        holder.wait(timeout=30)
    assert done.returncode == 2
    last = done.stderr.decode().strip().splitlines()[-1]  # chDB prints its own lock error before
    assert (
        last.startswith("flowaudit: the embedded store is held by another process")
        and "stop the worker" in last
    )
