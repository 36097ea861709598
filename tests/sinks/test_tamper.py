"""Issue 17's examination, as tests: single modifications of copies of a store written by the real
writer (`ClickHouseSink` over `AuditStore` with the Merkle log on), each one detected.

The store: 3,000 generated records on two chains, written in 12 batches (one link per chain each),
and a witness that read every signed checkpoint as it was published (`domain.witness`, proofs from
the store). Each test copies the three tables into a database of its own, makes one modification,
and verifies the copy: with the HMAC chain key (what `flowaudit verify` did before), with the log's
public key, and with the witness's state.

The eight modifications the issue found missed, each marked `missed before` where the HMAC check
alone still passes: a rewrite using the chain key; the newest link(s) dropped three ways (rows;
rows and their checkpoint; rows, checkpoints and nodes); a whole chain deleted; DROP PARTITION;
TRUNCATE; DROP TABLE. Then a rewrite by a holder of both of the writer's keys (HMAC and Ed25519,
checkpoints re-signed), which only the witness can catch, and a representative set of the others.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flowaudit.domain.checkpoint import CosignatureSigner, NoteSigner
from flowaudit.domain.policy import Policy
from flowaudit.domain.witness import COSIGNED, FORK, SHRINK, Witness
from flowaudit.integrity import missing_store_verdict
from flowaudit.sinks.audit import ChainHead, content_bytes, content_from_stored, link_hash, row_hash
from flowaudit.sinks.clickhouse import AuditStore, StoreError
from flowaudit.sinks.merkle_log import MerkleLog
from flowaudit.sinks.merkle_store import MerkleStore
from flowaudit.sinks.merkle_verify import VerifyOptions, verify_with
from flowaudit.sinks.verify import verify_store
from flowaudit.sinks.writer import ClickHouseSink
from flowaudit.witness import StoreProofs, observe_all
from tests.sinks.test_clickhouse_store import generated

pytestmark = pytest.mark.integration

KEY = b"tamper-test-key!" * 2
SIGNER = NoteSigner("audit.tamper", bytes(range(32)))
WITNESS_SIGNER = CosignatureSigner("witness.tamper", bytes(range(2, 34)))
TABLES = ("audit_events", "audit_merkle_nodes", "audit_merkle_checkpoints")
CHAIN = "in/0"
_COPIES = itertools.count()


@dataclass
class Original:
    url: str
    database: str
    policy: Policy
    witness: Witness

    @property
    def witnessed(self) -> tuple[tuple[str, int, bytes], ...]:
        return tuple((chain, tree.size, tree.root) for chain, tree in sorted(self.witness.trees.items()))


@pytest.fixture(scope="module")
def original(chdb_path: Path, policy: Policy) -> Iterator[Original]:
    """The store as the worker writes it, and a witness that saw each checkpoint as it came."""
    database = "tamper_original"
    store = AuditStore(f"chdb://{chdb_path}", policy, KEY, database=database, log_signer=SIGNER)
    store.connect()
    witness = Witness(SIGNER.verifier(), WITNESS_SIGNER)
    proofs = StoreProofs(MerkleStore(store.client, database))
    records = generated(policy, 3000, seed=17)

    async def write() -> None:
        sink = ClickHouseSink(store)
        for start in range(0, len(records), 250):
            batch = records[start : start + 250]
            await sink.write(batch)
            notes = sink.latest_checkpoints(sorted({r.chain_id for r in batch}))
            observe_all(witness, notes, proofs)  # as published before the batch is acknowledged
        sink.executor.shutdown(wait=True)

    asyncio.run(write())
    assert {tree.size for tree in witness.trees.values()} == {1500} and len(witness.trees) == 2
    yield Original(store.url, database, policy, witness)
    store.close()


class Copy:
    """A copy of the original's tables in a database of its own, with helpers to tamper with it."""

    def __init__(self, original: Original) -> None:
        self.original = original
        self.database = f"tamper_copy_{next(_COPIES)}"
        self.store = AuditStore(original.url, original.policy, KEY, database=self.database)
        self.store._client = _client(original)
        self.client = self.store.client
        self.client.command(f"CREATE DATABASE {self.database}")
        for table in TABLES:
            self.client.command(f"CREATE TABLE {self.database}.{table} AS {original.database}.{table}")
            self.client.command(
                f"INSERT INTO {self.database}.{table} SELECT * FROM {original.database}.{table}"
            )
        self.table = f"{self.database}.audit_events"

    def run(self, sql: str) -> None:
        self.client.command(sql.format(db=self.database), settings={"mutations_sync": 2})

    def last_seq(self, chain: str = CHAIN) -> int:
        _, rows = self.store.query(f"SELECT max(chain_seq) FROM {self.table} WHERE chain_id = '{chain}'")
        return int(rows[0][0])

    def reader(self, key: bytes = KEY) -> AuditStore:
        store = AuditStore(self.original.url, self.original.policy, key, database=self.database)
        store.connect(writer=False)
        return store

    def verdicts(self) -> dict[str, str | None]:
        """The first problem (None: it verifies) of each check: hmac, merkle (public key), witness."""
        try:
            store = self.reader()
        except StoreError as exc:  # the table is gone: only the witness's state can say it was there
            verdict = missing_store_verdict(exc, self.original.witnessed)
            return {"hmac": "no store", "merkle": "no store", "witness": verdict and verdict["problems"][0]}
        try:
            checks = {
                "hmac": verify_store(store),
                "merkle": verify_with(store, VerifyOptions(SIGNER.verifier().vkey)),
                "witness": verify_with(store, VerifyOptions(SIGNER.verifier().vkey, self.original.witnessed)),
            }
        finally:
            store.close()
        for name, report in checks.items():
            assert report.error is None, (name, report.error)
        return {name: (report.problems[0] if report.problems else None) for name, report in checks.items()}

    def rewrite_chain(self, chain: str, change: Callable[[dict[str, Any]], None], *, resign: bool) -> None:
        """Alter a row and recompute, with the chain key, its row hash and every link of the chain
        after it; with `resign`, also rebuild the chain's Merkle nodes and re-sign its checkpoints
        with the writer's Ed25519 key (a holder of both of the writer's keys)."""
        rows = list(
            self.store.stream(
                f"SELECT * FROM {self.table} WHERE chain_id = {{c:String}} ORDER BY chain_seq, link_index",
                {"c": chain},
            )
        )
        change(rows[len(rows) // 3])
        previous, by_seq = bytes(32), itertools.groupby(rows, key=lambda row: int(row["chain_seq"]))
        for seq, link_rows in by_seq:
            members = list(link_rows)
            for row in members:
                row["row_hash"] = row_hash(content_bytes(content_from_stored(row)))
            link = link_hash(KEY, chain, seq, previous, [row["row_hash"] for row in members])
            for row in members:
                row["link_hash"] = link
            previous = link
        self.run(f"ALTER TABLE {{db}}.audit_events DELETE WHERE chain_id = '{chain}'")
        self.client.insert(self.table, [list(row.values()) for row in rows], column_names=list(rows[0]))
        if resign:
            for table in TABLES[1:]:
                self.run(f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = '{chain}'")
            log = MerkleLog(MerkleStore(self.client, self.database), SIGNER)
            log.load({chain: ChainHead(int(rows[-1]["chain_seq"]))}, KEY, self.table)


def _client(original: Original) -> Any:
    store = AuditStore(original.url, original.policy, KEY, database=original.database)
    store.connect(writer=False)
    return store.client


@pytest.fixture
def copy(original: Original) -> Iterator[Copy]:
    made = Copy(original)
    yield made
    made.store.close()


def _allow_everything(row: dict[str, Any]) -> None:
    """A blocked flow made allowed (an allowed one gets another purpose: the row changes either way)."""
    if row["decision"] == "blocked":
        row["decision"], row["rules"] = "allowed", []
    else:
        row["purpose"] = "marketing" if row["purpose"] != "marketing" else "backup"


# --- the eight the issue found missed -------------------------------------------------------------


def test_a_rewrite_with_the_chain_key_is_caught_by_the_public_key(copy: Copy) -> None:
    copy.rewrite_chain(CHAIN, _allow_everything, resign=False)
    verdicts = copy.verdicts()
    assert verdicts["hmac"] is None  # missed before
    assert verdicts["merkle"] is not None and "do not give the signed tree" in verdicts["merkle"]


def test_the_newest_link_dropped_without_its_checkpoint_is_caught_by_the_public_key(copy: Copy) -> None:
    copy.run(
        f"ALTER TABLE {{db}}.audit_events DELETE WHERE chain_id = '{CHAIN}' AND chain_seq = {copy.last_seq()}"
    )
    verdicts = copy.verdicts()
    assert verdicts["hmac"] is None  # missed before
    assert verdicts["merkle"] is not None and "newest links were deleted" in verdicts["merkle"]


def test_the_newest_link_dropped_with_its_checkpoint_is_caught_by_the_witness(copy: Copy) -> None:
    last = copy.last_seq()
    for table in ("audit_events", "audit_merkle_checkpoints"):
        copy.run(f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = '{CHAIN}' AND chain_seq = {last}")
    verdicts = copy.verdicts()
    assert verdicts["hmac"] is None and verdicts["merkle"] is None  # a consistent shorter log
    assert verdicts["witness"] is not None and "truncated" in verdicts["witness"]


def test_the_newest_links_dropped_with_checkpoints_and_nodes_are_caught_by_the_witness(copy: Copy) -> None:
    last = copy.last_seq()
    _, rows = copy.store.query(
        f"SELECT tree_size FROM {copy.database}.audit_merkle_checkpoints "
        f"WHERE chain_id = '{CHAIN}' AND chain_seq = {last - 3}"
    )
    size = int(rows[0][0])
    for table in ("audit_events", "audit_merkle_checkpoints"):
        copy.run(f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = '{CHAIN}' AND chain_seq > {last - 3}")
    copy.run(  # every node with a leaf past the new end
        f"ALTER TABLE {{db}}.audit_merkle_nodes DELETE WHERE chain_id = '{CHAIN}' "
        f"AND (node_index + 1) * pow(2, level) > {size}"
    )
    verdicts = copy.verdicts()
    assert verdicts["hmac"] is None and verdicts["merkle"] is None
    assert verdicts["witness"] is not None and f"the store holds {size}" in verdicts["witness"]


def test_a_whole_chain_deleted_is_caught(copy: Copy) -> None:
    copy.run(f"ALTER TABLE {{db}}.audit_events DELETE WHERE chain_id = '{CHAIN}'")
    verdicts = copy.verdicts()
    assert verdicts["hmac"] is None  # missed before
    assert verdicts["merkle"] is not None and "but no rows" in verdicts["merkle"]
    for table in TABLES[1:]:  # and its Merkle log with it: only the witness remembers the chain
        copy.run(f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = '{CHAIN}'")
    verdicts = copy.verdicts()
    assert verdicts["hmac"] is None and verdicts["merkle"] is None
    assert verdicts["witness"] is not None and f"chain {CHAIN}" in verdicts["witness"]


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE {db}.audit_events DROP PARTITION ID '{partition}'",
        "TRUNCATE TABLE {db}.audit_events",
        "DROP TABLE {db}.audit_events",
    ],
    ids=["drop partition", "truncate", "drop table"],
)
def test_the_rows_gone_at_once_are_caught(copy: Copy, statement: str) -> None:
    _, partitions = copy.store.query(f"SELECT DISTINCT _partition_id FROM {copy.table}")
    assert len(partitions) == 1  # every row was ingested this month
    copy.run(statement.replace("{partition}", str(partitions[0][0])))
    verdicts = copy.verdicts()
    assert verdicts["hmac"] in (None, "no store")  # before: "OK: 0 rows", or no verdict
    assert verdicts["witness"] is not None
    if verdicts["merkle"] != "no store":  # the signed checkpoints are still there
        assert verdicts["merkle"] is not None and "but no rows" in verdicts["merkle"]
        for table in TABLES[1:]:  # the Merkle log wiped too: only the witness remembers
            copy.run(f"TRUNCATE TABLE {{db}}.{table}")
        verdicts = copy.verdicts()
        assert verdicts["hmac"] is None and verdicts["merkle"] is None
        assert verdicts["witness"] is not None and "witness cosigned" in verdicts["witness"]


# --- a rewrite with both of the writer's keys ------------------------------------------------------


def test_a_rewrite_re_signed_with_the_writers_keys_is_caught_only_by_the_witness(
    copy: Copy, original: Original
) -> None:
    copy.rewrite_chain(CHAIN, _allow_everything, resign=True)
    verdicts = copy.verdicts()
    assert verdicts["hmac"] is None and verdicts["merkle"] is None  # every key the writer holds was used
    assert verdicts["witness"] is not None and "rewritten" in verdicts["witness"]
    # and the witness, handed the forged log's next checkpoint, refuses to cosign it
    forged = MerkleStore(copy.client, copy.database).checkpoints(CHAIN)[-1].note
    witness = Witness(original.witness.log_key, WITNESS_SIGNER, dict(original.witness.trees))
    seen = observe_all(witness, [forged], StoreProofs(MerkleStore(copy.client, copy.database)))
    assert seen[0].outcome == FORK


def test_a_truncated_log_that_grows_again_is_a_shrink_to_the_witness(copy: Copy, original: Original) -> None:
    last = copy.last_seq()
    for table in ("audit_events", "audit_merkle_checkpoints"):
        copy.run(f"ALTER TABLE {{db}}.{table} DELETE WHERE chain_id = '{CHAIN}' AND chain_seq > {last - 2}")
    shorter = MerkleStore(copy.client, copy.database).checkpoints(CHAIN)[-1].note
    witness = Witness(original.witness.log_key, WITNESS_SIGNER, dict(original.witness.trees))
    seen = observe_all(witness, [shorter], StoreProofs(MerkleStore(copy.client, copy.database)))
    assert seen[0].outcome in (SHRINK, "stale")  # a prefix: an old checkpoint, not cosigned again
    assert witness.trees == original.witness.trees


# --- a representative set of the modifications HMAC verify caught: still caught -------------------


def _first_event(copy: Copy, where: str = "1") -> str:
    _, rows = copy.store.query(
        f"SELECT toString(event_id) FROM {copy.table} WHERE chain_id = '{CHAIN}' AND {where} "
        "ORDER BY chain_seq, link_index LIMIT 1 OFFSET 40"
    )
    return str(rows[0][0])


ROWS, NODES, CHECKPOINTS = (f"ALTER TABLE {{db}}.{table} " for table in TABLES)
ROW = " WHERE event_id = '{e}'"
LINK_2 = " WHERE chain_id = 'in/0' AND chain_seq = 2"
CAUGHT = {
    "content altered": ROWS + "UPDATE purpose = 'marketing'" + ROW,
    "decision altered": ROWS + "UPDATE decision = 'allowed', rules = []" + ROW,
    "row hash altered": ROWS + "UPDATE row_hash = unhex(repeat('ab', 32))" + ROW,
    "link hash altered": ROWS + "UPDATE link_hash = unhex(repeat('cd', 32))" + ROW,
    "position altered": ROWS + "UPDATE link_index = link_index + 1" + ROW,
    "row deleted": ROWS + "DELETE" + ROW,
    "middle link deleted": ROWS + "DELETE WHERE chain_id = 'in/0' AND chain_seq = 3",
    "row moved to another link": ROWS + "UPDATE chain_seq = chain_seq + 1" + ROW,
    "row format altered": ROWS + "UPDATE row_format = 1" + ROW,
    "checkpoint size altered": CHECKPOINTS + "UPDATE tree_size = tree_size + 1" + LINK_2,
    "checkpoint note altered": CHECKPOINTS
    + "UPDATE note = replaceOne(note, '\\n— ', '\\nextra\\n— ')"
    + LINK_2,
    "checkpoint deleted": CHECKPOINTS + "DELETE" + LINK_2,
    # a node of the tree's right edge (1,500 leaves: 1024 + 256 + 128 + 64 + 16 + 8 + 4): verify
    # checks the edge; an inner node altered fails the receipts whose proofs use it, never passes one
    "node altered": NODES + "UPDATE hash = unhex(repeat('ef', 32)) WHERE chain_id = 'in/0' AND level = 2 "
    "AND node_index = 374",
    "node deleted": NODES + "DELETE WHERE chain_id = 'in/0' AND level = 10",
}


# rows the statement does change (a blocked row made allowed, a purpose that is not marketing)
CHANGES_A_ROW = {"content altered": "purpose != 'marketing'", "decision altered": "decision = 'blocked'"}


@pytest.mark.parametrize("name", list(CAUGHT))
def test_other_modifications_are_still_caught(copy: Copy, name: str) -> None:
    victim = _first_event(copy, CHANGES_A_ROW.get(name, "1"))
    copy.run(CAUGHT[name].replace("{e}", victim))
    verdicts = copy.verdicts()
    merkle_only = name.startswith(("checkpoint", "node"))
    assert (verdicts["hmac"] is None) == merkle_only, verdicts
    assert verdicts["merkle"] is not None and verdicts["witness"] is not None, verdicts


def test_a_forged_row_added_is_caught(copy: Copy) -> None:
    rows = list(copy.store.stream(f"SELECT * FROM {copy.table} WHERE event_id = '{_first_event(copy)}'"))
    forged = dict(rows[0])
    _allow_everything(forged)
    forged["row_hash"] = row_hash(content_bytes(content_from_stored(forged)))
    copy.client.insert(copy.table, [list(forged.values())], column_names=list(forged))
    assert all(verdict is not None for verdict in copy.verdicts().values())


def test_the_copies_verify_untouched(copy: Copy) -> None:
    assert copy.verdicts() == {"hmac": None, "merkle": None, "witness": None}
    assert COSIGNED  # the witness cosigned every checkpoint of the original (see the fixture)
