"""Building a data subject's receipt from the store (the format and its check: domain/receipt.py).

`build_receipt(query, subject, since_ms, until_ms, witnessed)` reads, through `query` (an
`AuditStore.query`, or the worker's store thread for the web API: SQL written against the
unqualified table names):
1. the subject's rows: their own (`user_id`, a primary-key range) and the bulk transfers that name
   them (event ids from the per-subject index), with their content in their row format;
2. per chain, the latest signed checkpoint (the tree every row is proved against) and the tree
   size at each of the rows' links (a row's leaf index is `tree_size - link_rows + link_index`);
3. the proof nodes of every row, once each: named for all rows at once
   (`domain.merkle.inclusion_nodes`, level by level: 14 ms for 10,000 rows of a 2.5 M-leaf tree,
   where building each proof took 0.34 s), then read one query per large level and one for all the
   small ones, the positions one string literal, the hashes base64-encoded by the engine as the
   receipt carries them (`read_nodes_by_level`; ~100,000 nodes for a 10,000-row receipt of a 10 M-row
   store: bench/receipt.py, docs/performance.md);
4. when a witness's trees are given (its state: chain -> size and cosigned note), the consistency
   proof from the witnessed tree to the checkpoint.
Rows are those of the store as it is: one written after the latest checkpoint read here is in the
next receipt (the checkpoint is read after the rows, so every row read is in it).
"""

from __future__ import annotations

import base64
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from flowaudit.domain.merkle import NodeId, consistency_ranges, inclusion_nodes, proof_nodes, range_hash
from flowaudit.domain.receipt import RECEIPT_FORMAT, node_key
from flowaudit.sinks.audit import (
    CONTENT_COLUMNS,
    CONTENT_COLUMNS_BY_FORMAT,
    TIMESTAMP_COLUMNS,
    contents_from_stored,
)

Query = Callable[[str, dict[str, Any]], tuple[list[str], list[tuple[Any, ...]]]]

_LINK = ("chain_id", "chain_seq", "link_rows", "link_index")
_SELECT = ", ".join(
    f"toUnixTimestamp64Milli({c}) AS {c}" if c in TIMESTAMP_COLUMNS else c for c in (*CONTENT_COLUMNS, *_LINK)
)
# `occurred_at` in the rows' WHERE is the select list's alias (epoch ms), as ClickHouse resolves it
_WINDOW_MS = "occurred_at >= {since:Int64} AND occurred_at < {until:Int64}"
_WINDOW = (
    "occurred_at >= fromUnixTimestamp64Milli({since:Int64}) "
    "AND occurred_at < fromUnixTimestamp64Milli({until:Int64})"
)
ROWS_SQL = f"""SELECT {_SELECT} FROM audit_events WHERE user_id = {{subject:String}} AND {_WINDOW_MS}
UNION ALL
SELECT {_SELECT} FROM audit_events WHERE event_id IN (
    SELECT event_id FROM audit_subjects WHERE subject = {{subject:String}} AND {_WINDOW})
    AND (user_id IS NULL OR user_id != {{subject:String}})"""


class ReceiptBuildError(Exception):
    """The store cannot give a receipt (no Merkle log, a row without a checkpoint, a node missing)."""


def build_receipt(
    query: Query,
    subject: str,
    since_ms: int,
    until_ms: int,
    witnessed: Mapping[str, tuple[int, str]] | None = None,
) -> dict[str, Any]:
    """The subject's receipt (a JSON-ready dict). `witnessed`: chain -> (size, cosigned note)."""
    names, rows = query(ROWS_SQL, {"subject": subject, "since": since_ms, "until": until_ms})
    contents = contents_from_stored(names, rows)
    # an empty result may name no columns (chDB): then there is no row to place
    chain_at, seq_at, link_rows_at, link_index_at = (names.index(c) if rows else 0 for c in _LINK)
    by_chain: dict[str, list[int]] = defaultdict(list)  # chain -> its rows' numbers, in query order
    for number, row in enumerate(rows):
        by_chain[str(row[chain_at])].append(number)
    chains: dict[str, Any] = {}
    receipt_rows: list[dict[str, Any]] = []
    for chain, numbers in sorted(by_chain.items()):
        links = [
            (int(rows[n][seq_at]), int(rows[n][link_rows_at]), int(rows[n][link_index_at])) for n in numbers
        ]
        entry, indices = _chain_entry(query, chain, links, (witnessed or {}).get(chain))
        chains[chain] = entry
        receipt_rows.extend(
            {"chain": chain, "leaf_index": index, "content": contents[number]}
            for number, index in zip(numbers, indices, strict=True)
        )
    receipt_rows.sort(key=lambda r: (r["content"][2], r["chain"], r["leaf_index"]))  # by occurred_at
    return {
        "format": RECEIPT_FORMAT,
        "subject": subject,
        "since": since_ms,
        "until": until_ms,
        "generated_at": int(time.time() * 1000),
        "columns": {str(f): list(columns) for f, columns in CONTENT_COLUMNS_BY_FORMAT.items()},
        "chains": chains,
        "rows": receipt_rows,
    }


def _chain_entry(
    query: Query, chain: str, links: Sequence[tuple[int, int, int]], witnessed: tuple[int, str] | None
) -> tuple[dict[str, Any], list[int]]:
    """One chain's checkpoint, witnessed note, consistency proof and nodes; the leaf indices of the
    rows at `links` (chain_seq, link_rows, link_index)."""
    seqs = sorted({seq for seq, _, _ in links})
    _, found = query(
        "SELECT chain_seq, tree_size FROM audit_merkle_checkpoints WHERE chain_id = {c:String} "
        "AND chain_seq IN {seqs:Array(UInt64)}",
        {"c": chain, "seqs": seqs},
    )
    sizes = {int(seq): int(size) for seq, size in found}
    missing = [seq for seq in seqs if seq not in sizes]
    if missing:
        raise ReceiptBuildError(f"chain {chain}: link {missing[0]} has no signed checkpoint (no Merkle log?)")
    indices = [sizes[seq] - link_rows + link_index for seq, link_rows, link_index in links]
    _, latest = query(
        "SELECT tree_size, argMax(note, tree_size) FROM audit_merkle_checkpoints WHERE chain_id = {c:String} "
        "GROUP BY tree_size ORDER BY tree_size DESC LIMIT 1",
        {"c": chain},
    )
    size, note = int(latest[0][0]), str(latest[0][1])
    consistency: list[tuple[int, int]] = []
    if witnessed is not None:
        if witnessed[0] > size:
            raise ReceiptBuildError(
                f"chain {chain}: the witness cosigned {witnessed[0]} leaves, the store has {size}"
            )
        consistency = consistency_ranges(witnessed[0], size)
    folded = proof_nodes(consistency)
    try:
        wanted = inclusion_nodes(indices, size)
    except ValueError as exc:
        raise ReceiptBuildError(f"chain {chain}: {exc} (a row past the latest checkpoint?)") from None
    for node in folded:
        wanted.setdefault(node.level, set()).add(node.position)
    nodes = read_nodes_by_level(query, chain, size, wanted)
    hashes = _hashes(nodes, folded)
    entry = {
        "checkpoint": note,
        "witnessed": witnessed[1] if witnessed is not None else None,
        "consistency": [base64.b64encode(range_hash(s, e, hashes)).decode() for s, e in consistency],
        "nodes": nodes,
    }
    return entry, indices


# The nodes of one level, their hashes base64-encoded by the engine (as the receipt carries them).
# The positions are one string literal the engine splits, not an IN list of literals: on the bench
# store (bench/receipt.py) parsing and analysing a 10,000-literal IN list cost ~3x the same query
# with the positions as one string (which also keeps the SQL small, and out of an HTTP URL as a
# parameter would be). DISTINCT: a retried insert's copy of a node is read once; a node with two
# different hashes comes back twice and is refused. The level's constant is not aliased `level`:
# the WHERE clause would then read the alias, not the column.
_LEVEL_SQL = (
    "SELECT DISTINCT {level} AS at_level, node_index, base64Encode(hash) FROM audit_merkle_nodes "
    "WHERE chain_id = {{c:String}} AND level = {level} AND node_index IN "
    "(SELECT arrayJoin(splitByChar(',', '{positions}'))::UInt64) ORDER BY node_index"
)
# The nodes of several small levels (the top of the tree) in one query: (level, position) pairs.
# One query per level cost ~9 ms each for levels 8-21 of a 2.5 M-leaf tree, ~0.13 s in all; one
# query for them ~0.03 s (bench store, load ~8). A UNION ALL of per-level queries was slower.
_LEVELS_SQL = (
    "SELECT DISTINCT level, node_index, base64Encode(hash) FROM audit_merkle_nodes "
    "WHERE chain_id = {{c:String}} AND level BETWEEN {low} AND {high} AND (level, node_index) IN "
    "(SELECT toUInt8(pair.1), toUInt64(pair.2) FROM (SELECT arrayJoin(arrayZip("
    "splitByChar(',', '{levels}'), splitByChar(',', '{positions}'))) AS pair)) ORDER BY level, node_index"
)
# Characters of positions one query lists: the engine refuses a query longer than max_query_size
# (262,144 bytes by default), which 10,000 spread positions of a large tree already approach.
MAX_LISTED = 200_000
# A level of at most this many nodes is read with the other small levels, in one query.
SMALL_LEVEL = 1 << 16


def read_nodes_by_level(
    query: Query, chain: str, size: int, wanted: Mapping[int, Collection[int]]
) -> dict[str, str]:
    """The `wanted` nodes (level -> distinct positions) of a chain's tree of `size` leaves as the
    receipt carries them (`level/position` -> base64 hash, by level then position): one query per
    large level, one for all the small ones (each split to list at most MAX_LISTED characters).
    Raises ReceiptBuildError naming a node that is missing, or one stored with two hashes."""
    nodes: dict[str, str] = {}
    for sql, pairs in _node_reads(size, wanted):
        _, rows = query(sql, {"c": chain})
        found = {f"{level}/{position}": digest for level, position, digest in rows}
        if len(found) < len(rows):
            level, position = Counter((int(r[0]), int(r[1])) for r in rows).most_common(1)[0][0]
            raise ReceiptBuildError(f"chain {chain}: node ({level}, {position}) has two hashes")
        if len(found) < len(pairs):
            level, position = next(pair for pair in pairs if f"{pair[0]}/{pair[1]}" not in found)
            raise ReceiptBuildError(f"chain {chain}: Merkle nodes missing at level {level} ({position})")
        nodes.update(found)
    return nodes


def _node_reads(
    size: int, wanted: Mapping[int, Collection[int]]
) -> Iterator[tuple[str, list[tuple[int, int]]]]:
    """The queries that read `wanted`, by level then position, each with the (level, position)
    pairs it must return."""
    small: list[tuple[int, int]] = []
    for level, positions in sorted(wanted.items()):
        pairs = [(level, position) for position in sorted(positions)]
        if size >> level > SMALL_LEVEL:
            for part in _parts(pairs):
                listed = ",".join(str(position) for _, position in part)
                yield _LEVEL_SQL.format(level=int(level), positions=listed), part
        else:
            small.extend(pairs)
    for part in _parts(small):
        levels = ",".join(str(level) for level, _ in part)
        listed = ",".join(str(position) for _, position in part)
        sql = _LEVELS_SQL.format(low=part[0][0], high=part[-1][0], levels=levels, positions=listed)
        yield sql, part


def _parts(pairs: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """`pairs` in runs whose levels and positions, listed, take at most MAX_LISTED characters
    together (each pair: its level's digits, its position's, two commas)."""
    if not pairs:
        return
    step = max(1, MAX_LISTED // (len(str(pairs[-1][0])) + len(str(max(p for _, p in pairs))) + 2))
    for first in range(0, len(pairs), step):
        yield pairs[first : first + step]


def _hashes(nodes: Mapping[str, str], wanted: Iterable[NodeId]) -> dict[NodeId, bytes]:
    """The raw hashes of a few of the read nodes (those a consistency proof folds)."""
    return {node: base64.b64decode(nodes[node_key(node)]) for node in wanted}


def parse_moment(text: str | None, default_ms: int, what: str) -> int:
    """Epoch milliseconds of `2025-11-05` or `2025-11-05T10:00:00[Z]` (UTC); ValueError naming `what`."""
    if not text:
        return default_ms
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a date (2025-11-05 or 2025-11-05T10:00:00Z)") from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return int(moment.timestamp() * 1000)


EARLIEST_MS = -2_208_988_800_000  # 1900-01-01, DateTime64's first day
LATEST_MS = 10_413_792_000_000  # 2300-01-01


__all__ = ["EARLIEST_MS", "LATEST_MS", "ROWS_SQL", "ReceiptBuildError", "build_receipt", "parse_moment"]
