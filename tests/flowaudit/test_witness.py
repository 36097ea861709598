"""`flowaudit witness` and `verify --witness` end to end: a worker on the embedded broker publishes a
signed checkpoint per batch before acknowledging it, the witness reads them (consistency proofs
through the worker's web API, as the worker holds the embedded store), cosigns and keeps its
state, and verify checks the store against it, through the worker and then on its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from flowaudit.broker import EmbeddedBroker
from flowaudit.common.settings import Settings
from flowaudit.domain.checkpoint import Checkpoint, open_checkpoint, parse_skey, parse_vkey
from flowaudit.domain.policy import Policy
from flowaudit.generator import EventGenerator
from flowaudit.runtime import all_topics
from flowaudit.sinks.merkle_log import chain_verifier, read_public_key
from tests.helpers import WorkerProcess, read_topic, run_cli, wait_for, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as started:
        started.create_topics([*all_topics(Settings()), Settings().topic_witnessed], 2)
        yield started


def test_the_witness_cosigns_what_the_worker_publishes_and_verify_uses_it(
    broker: EmbeddedBroker, tmp_path: Path, policy: Policy
) -> None:
    env = worker_env(broker.url, tmp_path / "data")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        events = list(EventGenerator(policy, seed=5).events(400))
        source = tmp_path / "events.jsonl"
        source.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
        assert run_cli(env, "produce", str(source)).returncode == 0
        wait_for(lambda: worker.metric("flowaudit_audit_rows_total") >= 390, 60, "the rows")
        wait_for(lambda: worker.metric("flowaudit_checkpoints_published_total") >= 1, 30, "a checkpoint")
        vkey = run_cli(env, "public-key").stdout.decode().strip()
        notes = [record.value.decode() for record in read_topic(broker.bootstrap, "flowaudit.checkpoints", 1)]
        log_key = parse_vkey(vkey)
        for note in notes:  # each one signed by the log, for its chain
            origin = note.split("\n", 1)[0]
            open_checkpoint(note, chain_verifier(log_key, origin.removeprefix(log_key.name + "/")))
        state = tmp_path / "witness" / "state.json"
        witnessed = run_cli(env, "witness", "--state", str(state), "--idle-exit", "3", timeout=120)
        assert witnessed.returncode == 0, witnessed.stderr.decode()[-2000:]
        kept = json.loads(state.read_text())
        assert kept["log"] == vkey and kept["chains"] and sum(kept["offsets"].values()) >= len(notes)
        cosigned = read_topic(broker.bootstrap, Settings().topic_witnessed, len(kept["chains"]))
        assert {record.key.decode() for record in cosigned} == set(kept["chains"])
        through_worker = run_cli(env, "verify", "--witness", str(state), "--json")
        assert through_worker.returncode == 0, through_worker.stdout
        assert json.loads(through_worker.stdout)["checks"] == ["hmac", "merkle", "witness"]
        subject = next(e["user_id"] for e in events if e.get("user_id") and e.get("event_type") != "consent")
        receipt = tmp_path / "receipt.json"
        made = run_cli(env, "receipt", "--user", subject, "--witness", str(state), "--out", str(receipt))
        assert made.returncode == 0, made.stderr.decode()
    finally:
        assert worker.stop() == 0
    alone = run_cli(env, "verify", "--witness", str(state))
    assert alone.returncode == 0 and b"(checked: hmac, merkle, witness)" in alone.stdout, alone.stdout
    witness_key = str(state.with_name("state.json.pub"))
    checked = run_cli(env, "verify-receipt", str(receipt), "--public-key", vkey, "--witness-key", witness_key)
    assert checked.returncode == 0 and checked.stdout.startswith(b"OK: "), checked.stdout + checked.stderr
    tampered = json.loads(receipt.read_text())
    tampered["rows"][0]["content"][2] += 1  # occurred_at moved by a millisecond
    receipt.write_text(json.dumps(tampered))
    refused = run_cli(env, "verify-receipt", str(receipt), "--public-key", vkey)
    assert refused.returncode == 1 and refused.stdout.startswith(b"INVALID: "), refused.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--witness", "{tmp}/no-state.json"], "holds no chain"),
        (["witness", "--state", "{tmp}/state.json"], "the log's public key is needed"),
        (["witness", "--state", "{tmp}/state.json", "--public-key", "not+a+key"], "public key"),
        (["verify-receipt", "{tmp}/none.json", "--public-key", "x"], "flowaudit: "),
        (["public-key"], "no checkpoint key"),
        (["receipt", "--user", "u-1", "--since", "yesterday"], "--since"),
    ],
    ids=["no witness state", "no public key", "bad public key", "no receipt", "no key yet", "bad date"],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flowaudit import cli

    monkeypatch.setenv("FLOWAUDIT_DATA_DIR", str(tmp_path / "data"))
    assert cli.main([arg.replace("{tmp}", str(tmp_path)) for arg in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_checkpoint_key_makes_a_signer_and_the_public_key_that_opens_its_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What docker-compose.yml's worker and witness are given: the pair, before either starts."""
    from flowaudit import cli

    monkeypatch.setenv("FLOWAUDIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWAUDIT_LOG_NAME", "audit.example")
    assert cli.main(["checkpoint-key"]) == 0
    pair = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert set(pair) == {"FLOWAUDIT_CHECKPOINT_KEY", "FLOWAUDIT_LOG_PUBLIC_KEY"}
    assert not (tmp_path / "data").exists()  # printed only: nothing written
    # the worker signs with the first, `flowaudit public-key` prints the second from it
    monkeypatch.setenv("FLOWAUDIT_CHECKPOINT_KEY", pair["FLOWAUDIT_CHECKPOINT_KEY"])
    assert cli.main(["public-key"]) == 0
    assert capsys.readouterr().out.strip() == pair["FLOWAUDIT_LOG_PUBLIC_KEY"]
    signer = parse_skey(pair["FLOWAUDIT_CHECKPOINT_KEY"]).for_name("audit.example")
    origin = "audit.example/flowaudit.sharing/0"
    note = Checkpoint(origin, 3, bytes(32)).sign(signer.for_name(origin))
    log_key = read_public_key(pair["FLOWAUDIT_LOG_PUBLIC_KEY"])
    assert open_checkpoint(note, chain_verifier(log_key, "flowaudit.sharing/0")).size == 3
    assert cli.main(["checkpoint-key"]) == 0  # a new pair each time
    again = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert again["FLOWAUDIT_LOG_PUBLIC_KEY"] != pair["FLOWAUDIT_LOG_PUBLIC_KEY"]
