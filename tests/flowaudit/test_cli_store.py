"""`flowaudit verify|report` on a store that is not there: an error, and nothing created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.integration


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWAUDIT_")}
    env.update(FLOWAUDIT_DATA_DIR=str(data_dir), **extra)
    return env


@pytest.mark.parametrize("command", [["verify"], ["report", "daily-volume"]])
def test_a_mistyped_data_dir_is_an_error_not_an_empty_store(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "flowaudti"
    done = run_cli(_env(typo), *command)
    assert done.returncode == 2, done.stdout
    assert "no chain key" in done.stderr.decode()
    assert not typo.exists()  # no store, no key created
    # with a key given, it is the store that is missing
    keyed = run_cli(_env(typo, FLOWAUDIT_CHAIN_KEY="k" * 32), *command)
    assert keyed.returncode == 2
    assert "there is no audit store at" in keyed.stderr.decode()
    assert not typo.exists()
    assert "OK" not in keyed.stdout.decode()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["report", "daily-volume", "--user", "u-1"],
            "flowaudit: report daily-volume takes no --user (its parameters: --since, --until)\n",
        ),
        (
            ["report", "daily-volume", "--since", "2025-12-01", "--until", "2025-11-01"],
            "flowaudit: --since 2025-12-01 is after --until 2025-11-01\n",
        ),
        (
            ["report", "user-disclosures"],
            "flowaudit: report user-disclosures needs --user (the data subject's user id)\n",
        ),
        (
            ["report", "no-such-report"],
            "flowaudit: unknown report 'no-such-report'; `flowaudit report --list` lists them\n",
        ),
    ],
)
def test_a_report_refuses_what_it_does_not_take_in_one_line_with_exit_2(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    """Through the command: refused before any store is opened (the data directory does not exist)."""
    done = run_cli(_env(tmp_path / "nowhere"), *arguments)
    assert (done.returncode, done.stderr.decode(), done.stdout) == (2, message, b"")
    assert not (tmp_path / "nowhere").exists()
