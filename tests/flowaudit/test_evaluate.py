from __future__ import annotations

import io
import json
import subprocess
import sys
from itertools import islice

import orjson

from flowaudit.domain.policy import Policy, load_policy
from flowaudit.evaluate import evaluate_lines, read_lines
from flowaudit.generator import EventGenerator
from flowaudit.policy import DEFAULT_POLICY_DIR
from tests.conftest import DATA_DIR, read_data

EVENTS = DATA_DIR / "events"


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "flowaudit.cli", *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=120,
    )


V2_KEYS = [
    "event_id",
    "decision",
    "data_categories",
    "legal_basis",
    "rules",
    "special_category_condition",
    "transfer_mechanism",
    "flags",
    "waived",
    "counterparty",
    "policy_version",
]


def test_evaluate_valid_file_exit_0_one_line_each_in_order() -> None:
    result = _run("evaluate", str(EVENTS / "valid.jsonl"))
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.decode().splitlines()]
    inputs = [json.loads(line) for line in (EVENTS / "valid.jsonl").read_text().splitlines()]
    assert [o["event_id"] for o in outputs] == [i["event_id"] for i in inputs]
    # contract v2 §7, key for key and in order; every line reviewed against the contract by hand
    policy = load_policy(DEFAULT_POLICY_DIR)
    expected_file = DATA_DIR / "evaluate" / "valid.expected.jsonl"
    expected_lines = expected_file.read_text().replace("POLICY_VERSION", policy.version)
    expected = [json.loads(line) for line in expected_lines.splitlines()]
    assert [list(o) for o in outputs] == [V2_KEYS] * len(outputs)
    assert outputs == expected
    assert b"lines/s" in result.stderr


def test_evaluate_v2_examples_give_exactly_the_contract_output(policy: Policy) -> None:
    """Consents, the ledger as of occurred_at, the exception by alias, mechanisms, flags, errors."""
    result = _run("evaluate", str(DATA_DIR / "evaluate" / "contract_v2.jsonl"))
    assert result.returncode == 1  # two invalid lines, reported in place
    expected = (DATA_DIR / "evaluate" / "contract_v2.expected.jsonl").read_text()
    expected = expected.replace("POLICY_VERSION", policy.version)
    outputs = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert outputs == [json.loads(line) for line in expected.splitlines()]
    assert [list(o) for o in outputs if "decision" in o] == [V2_KEYS] * 9


def test_evaluate_mixed_stdin_reports_errors_in_place_and_exits_1() -> None:
    valid = (EVENTS / "valid.jsonl").read_bytes().splitlines()
    invalid = (EVENTS / "invalid.jsonl").read_bytes().splitlines()
    mixed = [valid[0], invalid[0], valid[1], invalid[3]]
    result = _run("evaluate", "-", stdin=b"\n".join(mixed) + b"\n")
    assert result.returncode == 1
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(out) == 4
    assert out[0]["decision"] == "allowed" and out[2]["decision"] == "blocked"
    assert out[1]["line"] == 2 and "not valid JSON" in out[1]["error"]
    assert out[3] == {"line": 4, "error": out[3]["error"]} and "UUID" in out[3]["error"]


def test_evaluate_every_invalid_line_has_its_reason() -> None:
    result = _run("evaluate", str(EVENTS / "invalid.jsonl"), "--quiet")
    assert result.returncode == 1 and result.stderr == b""
    reasons = read_data("events/invalid_reasons.yaml")
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [o["line"] for o in out] == list(range(1, len(reasons) + 1))
    for item in out:
        assert reasons[item["line"]] in item["error"]


def test_evaluate_verbose_adds_policy_version(policy: Policy) -> None:
    result = _run("evaluate", str(EVENTS / "valid.jsonl"), "--verbose", "--quiet")
    first = json.loads(result.stdout.splitlines()[0])
    assert first["policy_version"] == policy.version


def test_evaluate_rejects_a_bad_policy_dir_at_start(tmp_path: object) -> None:
    result = _run("evaluate", str(EVENTS / "valid.jsonl"), "--policy-dir", "/nonexistent/policy")
    assert result.returncode == 2 and b"invalid policy" in result.stderr


def test_evaluate_streams_a_generated_mix_in_order(policy: Policy) -> None:
    generator = EventGenerator(policy, seed=3)
    lines = (orjson.dumps(e) for e in generator.events(5000))
    out = io.BytesIO()
    stats = evaluate_lines(lines, policy, out, flush_every=100)
    assert stats.lines == 5000 and stats.errors == 0
    decided = out.getvalue().splitlines()
    assert len(decided) == 5000
    again = EventGenerator(policy, seed=3)
    assert [orjson.loads(d)["event_id"] for d in decided[:50]] == [
        e["event_id"] for e in islice(again.events(50), 50)
    ]


def test_read_lines_keeps_a_blank_middle_line_and_no_phantom_last_line() -> None:
    assert list(read_lines(io.BytesIO(b"a\n\nb\r\n"))) == [b"a", b"", b"b"]


def test_policy_show_and_check(policy: Policy) -> None:
    shown = _run("policy", "show")
    assert shown.returncode == 0 and policy.version.encode() in shown.stdout
    as_json = json.loads(_run("policy", "show", "--json").stdout)
    assert as_json["version"] == policy.version and len(as_json["subcontractors"]) == 19
    # what a DPO reads off the register: description, retention and source of each purpose
    marketing = as_json["purposes"]["marketing"]
    assert marketing["retention"] == policy.purposes["marketing"].retention and marketing["source"]
    assert marketing["description"] == policy.purposes["marketing"].description
    assert {c["name"] for c in as_json["controllers"]} == {c.name for c in policy.controllers}
    assert all(c["serves"] and c["source"] for c in as_json["controllers"])
    assert b"controllers (2)" in shown.stdout
    assert _run("policy", "check", str(policy.directory)).returncode == 0
    bad = _run("policy", "check", str(DATA_DIR))
    assert bad.returncode == 1 and b"INVALID" in bad.stderr


def _peak_rss_kib_of_evaluate(tmp_path: object, policy: Policy, lines: int) -> int:
    import os
    import resource

    path = os.path.join(str(tmp_path), f"events-{lines}.jsonl")
    with open(path, "wb") as handle:
        for event in EventGenerator(policy, seed=5).events(lines):
            handle.write(orjson.dumps(event) + b"\n")
    code = (
        "import resource, subprocess, sys, os;"
        f"subprocess.run([sys.executable, '-m', 'flowaudit.cli', 'evaluate', {path!r}, '--quiet'],"
        " stdout=subprocess.DEVNULL, check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=300)
    del resource
    return int(result.stdout.strip())


def test_evaluate_memory_stays_flat(tmp_path: object, policy: Policy) -> None:
    small = _peak_rss_kib_of_evaluate(tmp_path, policy, 10_000)
    large = _peak_rss_kib_of_evaluate(tmp_path, policy, 150_000)
    # 15x the input may cost the bounded memos (a few MiB), never memory proportional to the input
    assert large - small < 16 * 1024, (small, large)


def test_evaluate_refuses_times_that_cannot_have_happened() -> None:
    """Dated 2031 (a clock error) and 1970 (a zero timestamp): invalid lines naming occurred_at."""
    result = _run("evaluate", str(EVENTS / "implausible_times.jsonl"), "--quiet")
    assert result.returncode == 1
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert out[0]["line"] == 1 and "more than 5 minutes after the moment it is decided" in out[0]["error"]
    assert out[1]["line"] == 2 and "before 2000-01-01" in out[1]["error"]
    assert out[2]["decision"] in ("allowed", "blocked")  # a plausible time still decides
