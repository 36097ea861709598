from __future__ import annotations

import io
import json
import subprocess
import sys
from itertools import islice

import orjson

from flowaudit.domain.policy import Policy
from flowaudit.evaluate import evaluate_lines, read_lines
from flowaudit.generator import EventGenerator
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


def test_evaluate_valid_file_exit_0_one_line_each_in_order() -> None:
    result = _run("evaluate", str(EVENTS / "valid.jsonl"))
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.decode().splitlines()]
    inputs = [json.loads(line) for line in (EVENTS / "valid.jsonl").read_text().splitlines()]
    assert [o["event_id"] for o in outputs] == [i["event_id"] for i in inputs]
    for output in outputs:
        assert list(output) == ["event_id", "decision", "data_categories", "legal_basis", "rules"]
    by_id = {o["event_id"]: o for o in outputs}
    assert by_id["1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e02"]["rules"] == ["health-data-leaves-eea"]
    assert by_id["3e4f5a6b-7c8d-4e9f-8a1b-2c3d4e5f6a04"]["rules"] == ["consent-missing"]
    assert by_id["7c8d9e0f-1a2b-4c3d-8e5f-6a7b8c9d0e08"]["rules"] == ["unknown-subcontractor"]
    assert by_id["5a6b7c8d-9e0f-4a1b-8c3d-4e5f6a7b8c06"] == {
        "event_id": "5a6b7c8d-9e0f-4a1b-8c3d-4e5f6a7b8c06",
        "decision": "allowed",
        "data_categories": ["health", "identity"],
        "legal_basis": "legitimate_interests",
        "rules": [],
    }
    assert b"lines/s" in result.stderr


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
