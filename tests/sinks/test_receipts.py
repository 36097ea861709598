"""Receipts (`sinks.receipts` builds, `domain.receipt` checks) on a store written with the Merkle log:
a subject's rows proved against the latest signed tree, linked to the witnessed one; anything
altered in the file, or a wrong key, fails the offline check."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
from typing import Any

import pytest

from flowaudit.domain.checkpoint import (
    CosignatureSigner,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    origin_for,
)
from flowaudit.domain.merkle import consistency_ranges, inclusion_ranges, proof_nodes
from flowaudit.domain.receipt import ReceiptError, node_key, verify_receipt
from flowaudit.domain.witness import Witness
from flowaudit.sinks import receipts
from flowaudit.sinks.clickhouse import AuditStore, qualify
from flowaudit.sinks.merkle_store import MerkleStore
from flowaudit.sinks.receipts import EARLIEST_MS, LATEST_MS, ReceiptBuildError, build_receipt, parse_moment
from flowaudit.streams.web import add_web_views
from flowaudit.witness import StoreProofs, observe_all
from tests.sinks.test_clickhouse_store import generated
from tests.streams.test_web import GOOD, GUARD, FakeApp, FakeRequest, FakeWeb

pytestmark = pytest.mark.integration

SIGNER = NoteSigner("audit.receipts", bytes(range(32)))
WITNESS = CosignatureSigner("witness.receipts", bytes(range(3, 35)))


@pytest.fixture
def written(store_factory: Any, policy: Any) -> tuple[AuditStore, Witness, str]:
    """A store of 1,200 rows in 8 batches, witnessed after the first 6; its busiest subject."""
    store = store_factory(log_signer=SIGNER)
    witness = Witness(SIGNER.verifier(), WITNESS)
    proofs = StoreProofs(MerkleStore(store.client, store.database))
    records = generated(policy, 1200, seed=23)
    for number, start in enumerate(range(0, 1200, 150)):
        store.write(records[start : start + 150])
        if number < 6:
            observe_all(witness, store.latest_checkpoints(sorted(store.heads)), proofs)
    _, rows = store.query(
        f"SELECT user_id FROM {store.table} WHERE user_id IS NOT NULL "
        "GROUP BY user_id ORDER BY count() DESC LIMIT 1"
    )
    return store, witness, str(rows[0][0])


def _receipt(
    store: AuditStore, subject: str, witness: Witness | None, nodes_sql: list[str] | None = None
) -> dict[str, Any]:
    """The subject's receipt as a reader gets it; `nodes_sql` collects the node queries."""
    witnessed = {c: (t.size, t.note) for c, t in witness.trees.items()} if witness else None

    def query(sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        if nodes_sql is not None and "audit_merkle_nodes" in sql:
            nodes_sql.append(sql)
        return store.query(qualify(sql, store.table), parameters)

    receipt = build_receipt(query, subject, EARLIEST_MS, LATEST_MS, witnessed)
    return json.loads(json.dumps(receipt))  # as a reader gets it: a file


def test_a_subjects_rows_are_proved_and_linked_to_the_witnessed_tree(written: Any) -> None:
    store, witness, subject = written
    receipt = _receipt(store, subject, witness)
    _, count = store.query(f"SELECT count() FROM {store.table} WHERE user_id = {{u:String}}", {"u": subject})
    assert len(receipt["rows"]) == int(count[0][0]) > 1
    check = verify_receipt(receipt, SIGNER.verifier(), WITNESS.verifier())
    assert check.rows == len(receipt["rows"]) and 0 < check.witnessed_rows < check.rows
    assert verify_receipt(receipt, SIGNER.verifier()).witnessed_rows == 0  # no witness key: log only


def _alter_content(receipt: dict[str, Any]) -> None:
    decision = receipt["columns"]["2"].index("decision")
    row = receipt["rows"][0]["content"]
    row[decision] = "allowed" if row[decision] == "blocked" else "blocked"


def _alter_index(receipt: dict[str, Any]) -> None:
    receipt["rows"][0]["leaf_index"] += 1


def _drop_a_node(receipt: dict[str, Any]) -> None:
    nodes = next(iter(receipt["chains"].values()))["nodes"]
    nodes.pop(sorted(nodes)[0])


def _another_subject(receipt: dict[str, Any]) -> None:
    receipt["subject"] = "u-someone-else"


def _unwitnessed(receipt: dict[str, Any]) -> None:
    next(iter(receipt["chains"].values()))["witnessed"] = None


@pytest.mark.parametrize(
    "alter", [_alter_content, _alter_index, _drop_a_node, _another_subject, _unwitnessed]
)
def test_anything_altered_in_the_receipt_fails_the_check(written: Any, alter: Any) -> None:
    store, witness, subject = written
    receipt = _receipt(store, subject, witness)
    altered = copy.deepcopy(receipt)
    alter(altered)
    with pytest.raises(ReceiptError):
        verify_receipt(altered, SIGNER.verifier(), WITNESS.verifier())


def test_a_receipt_checked_with_another_key_fails(written: Any) -> None:
    store, witness, subject = written
    receipt = _receipt(store, subject, witness)
    with pytest.raises(ReceiptError, match="not the log's"):
        verify_receipt(receipt, NoteSigner("audit.receipts", bytes(32)).verifier())
    other_witness = CosignatureSigner("witness.receipts", bytes(32)).verifier()
    with pytest.raises(ReceiptError, match="witnessed checkpoint does not verify"):
        verify_receipt(receipt, SIGNER.verifier(), other_witness)


def test_a_receipt_carries_exactly_the_nodes_its_proofs_read(written: Any) -> None:
    """The nodes are those of the rows' inclusion proofs and of the consistency proof, each once,
    by level then position, each the hash the node table holds."""
    store, witness, subject = written
    receipt = _receipt(store, subject, witness)
    merkle = MerkleStore(store.client, store.database)
    for chain, entry in receipt["chains"].items():
        size = open_checkpoint(entry["checkpoint"], _origin_verifier(chain)).size
        indices = [row["leaf_index"] for row in receipt["rows"] if row["chain"] == chain]
        ranges = [r for index in indices for r in inclusion_ranges(index, size)]
        ranges += consistency_ranges(witness.trees[chain].size, size)
        wanted = sorted(proof_nodes(ranges))
        assert list(entry["nodes"]) == [node_key(node) for node in wanted]
        stored = merkle.read_nodes(chain, wanted)
        assert [base64.b64decode(value) for value in entry["nodes"].values()] == [stored[n] for n in wanted]


@pytest.mark.parametrize(
    ("max_listed", "small_level"), [(12, receipts.SMALL_LEVEL), (200_000, 0), (200_000, 1 << 40), (40, 16)]
)
def test_the_nodes_are_the_same_however_the_reads_are_split(
    written: Any, monkeypatch: pytest.MonkeyPatch, max_listed: int, small_level: int
) -> None:
    """Levels read one by one or together, positions split to stay under the engine's
    max_query_size (MAX_LISTED characters a list): the same receipt."""
    store, witness, subject = written
    whole = _receipt(store, subject, witness)
    monkeypatch.setattr(receipts, "MAX_LISTED", max_listed)
    monkeypatch.setattr(receipts, "SMALL_LEVEL", small_level)
    statements: list[str] = []
    parts = _receipt(store, subject, witness, statements)
    assert {**parts, "generated_at": 0} == {**whole, "generated_at": 0}
    lists = [text for sql in statements for text in re.findall(r"splitByChar\(',', '([0-9,]*)'\)", sql)]
    levels = {key.split("/")[0] for key in _all_nodes(whole)}
    assert lists and max(map(len, lists)) <= max_listed
    if small_level == 0:  # every level alone, in parts of at most MAX_LISTED characters
        assert len(statements) >= len(levels) and all("level BETWEEN" not in sql for sql in statements)
    if small_level == 1 << 40:  # all levels together
        assert all("level BETWEEN" in sql for sql in statements)
    if max_listed == 12:
        assert len(statements) > len(levels)


def _all_nodes(receipt: dict[str, Any]) -> list[str]:
    return [key for entry in receipt["chains"].values() for key in entry["nodes"]]


def _origin_verifier(chain: str) -> NoteVerifier:
    return NoteVerifier(origin_for(SIGNER.name, chain), SIGNER.verifier().public_key)


def _subjects_chain(store: AuditStore, subject: str) -> str:
    _, rows = store.query(
        f"SELECT chain_id FROM {store.table} WHERE user_id = {{u:String}} LIMIT 1", {"u": subject}
    )
    return str(rows[0][0])


def test_a_node_stored_with_two_hashes_or_missing_gives_no_receipt(written: Any) -> None:
    store, witness, subject = written
    chain = _subjects_chain(store, subject)
    nodes = next(e["nodes"] for c, e in _receipt(store, subject, witness)["chains"].items() if c == chain)
    level, position = map(int, next(key for key in nodes if key.startswith("0/")).split("/"))
    table = MerkleStore(store.client, store.database).nodes_table
    store.client.command(f"INSERT INTO {table} VALUES ('{chain}', {level}, {position}, unhex('{'00' * 32}'))")
    with pytest.raises(ReceiptBuildError, match=rf"node \({level}, {position}\) has two hashes"):
        _receipt(store, subject, witness)
    store.client.command(
        f"DELETE FROM {table} WHERE chain_id = '{chain}' AND level = {level} AND node_index = {position}"
    )
    with pytest.raises(ReceiptBuildError, match=rf"Merkle nodes missing at level {level} \({position}\)"):
        _receipt(store, subject, witness)


def test_moments_parse_as_utc() -> None:
    assert parse_moment("1970-01-02", 0, "since") == 86_400_000
    assert parse_moment("1970-01-01T00:00:01Z", 0, "since") == 1000
    assert parse_moment(None, 7, "since") == 7
    with pytest.raises(ValueError, match="until"):
        parse_moment("yesterday", 0, "until")


class _StoreViews:
    """The worker's store thread as the web views see it, over a real store."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        return self.store.query(qualify(sql, self.store.table), parameters)

    async def verify(self, options: Any = None) -> Any:
        raise AssertionError("not asked here")


def test_the_worker_serves_the_same_receipt_to_a_caller_with_its_token(written: Any) -> None:
    """`/flowaudit/receipt/` (streams/web.py) builds through the worker's store thread: the same
    receipt as the CLI's, which verifies; no token, no receipt."""
    store, witness, subject = written
    app = FakeApp()
    add_web_views(app, _StoreViews(store), GUARD)
    view = app.pages["/flowaudit/receipt/"]
    given = json.dumps([[c, t.size, t.note] for c, t in witness.trees.items()])
    answer = asyncio.run(view(FakeWeb(), FakeRequest(GOOD, {"user": subject, "witnessed": given})))
    assert answer.status == 200 and answer.headers == {"Cache-Control": "no-store"}
    served = json.loads(json.dumps(answer.body))
    assert {**served, "generated_at": 0} == {**_receipt(store, subject, witness), "generated_at": 0}
    assert verify_receipt(served, SIGNER.verifier(), WITNESS.verifier()).rows == len(served["rows"])
    refused = asyncio.run(view(FakeWeb(), FakeRequest({"Host": GOOD["Host"]}, {"user": subject})))
    assert refused.status == 401
