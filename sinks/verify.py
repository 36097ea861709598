"""`flowaudit verify`: recompute every row hash and chain link of the audit store.

Works in two passes, both streaming:
1. the link index (one small row per link: `GROUP BY chain_id, chain_seq`) finds missing links,
   links whose row count differs from the count they were written with, and links with rows of
   different link hashes;
2. the rows of each chain, read in windows of links, are re-hashed and the links recomputed.

The first problem found is reported, naming the chain, the link and, where one exists, the row
(its event id and source offset). A deleted row is named by its position in its link.

Each row is hashed in the columns of its own row format (`sinks.audit.content_from_stored`), so a
store with rows written before and after a format change verifies as one chain; a row whose format
was altered no longer matches its hash. A store that no writer of this version has migrated yet
(no `row_format` column) is read with the columns it has: all its rows are format 1.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowaudit.sinks.audit import (
    CONTENT_COLUMNS,
    GENESIS,
    TIMESTAMP_COLUMNS,
    UnknownRowFormat,
    content_bytes,
    content_from_stored,
    link_hash,
    row_hash,
)
from flowaudit.sinks.clickhouse import AuditStore


class MerkleCheck(Protocol):
    """The Merkle log's check, fed link by link (`sinks.merkle_verify.MerkleCheck`); each call
    returns the first problem (one line) or None."""

    witnessed: Any
    checked_links: int

    def link(self, chain: str, seq: int, row_hashes: list[bytes]) -> str | None: ...

    def end_chain(self, chain: str, last_seq: int) -> str | None: ...

    def missing_chains(self, chains_with_rows: list[str]) -> str | None: ...


_WINDOW_ROWS = 200_000
# Timestamps are read as epoch milliseconds, the form they were hashed in: a stored value outside
# the range of Python's datetime (year 1 to 9999) must not stop the verification of a whole store.
_LINK_READ = ("chain_seq", "link_rows", "link_index", "link_hash", "row_hash")


def _select_list(columns: frozenset[str]) -> str:
    """The columns verify reads: every content column of any format that the table has (all of
    them when the table's columns are not known)."""
    return ", ".join(
        f"toUnixTimestamp64Milli({name}) AS {name}" if name in TIMESTAMP_COLUMNS else name
        for name in (*CONTENT_COLUMNS, *_LINK_READ)
        if not columns or name in columns
    )


@dataclass
class VerifyReport:
    chains: int = 0
    links: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    # set when the store could not be read to the end: nothing is then said about what was not read
    error: str | None = None
    # what was checked besides the row hashes: "hmac" (the chain key's links), "merkle" (signed
    # checkpoints, with the public key), "witness" (against a witness's cosigned trees)
    checks: list[str] = field(default_factory=list)
    checkpoints: int = 0  # signed checkpoints verified

    @property
    def ok(self) -> bool:
        return not self.problems and self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chains": self.chains,
            "links": self.links,
            "rows": self.rows,
            "problems": self.problems,
            "error": self.error,
            "checks": self.checks,
            "checkpoints": self.checkpoints,
        }


def _describe(row: dict[str, Any]) -> str:
    return f"event_id={row['event_id']} source offset {row['source_offset']}"


def verify_link_rows(
    key: bytes | None, chain: str, seq: int, previous: bytes, expected_rows: int, rows: list[dict[str, Any]]
) -> tuple[str | None, bytes]:
    """Check one link's rows (ordered by link_index). Returns (problem or None, recomputed link hash)."""
    where = f"chain {chain} link {seq}"
    hashes: list[bytes] = []
    seen_index: dict[int, dict[str, Any]] = {}
    for row in rows:
        try:
            content = content_bytes(content_from_stored(row))
        except (UnknownRowFormat, KeyError) as exc:
            return f"{where}: row {_describe(row)} was altered ({exc})", b""
        digest = row_hash(content)
        if digest != bytes(row["row_hash"]):
            return f"{where}: row {_describe(row)} was altered (its content no longer matches its hash)", b""
        index = int(row["link_index"])
        if index in seen_index:
            if not key:  # which of the two was written is for the link hash (or the Merkle tree) to say
                return (
                    f"{where}: two rows claim position {index}, one of them forged: "
                    f"{_describe(seen_index[index])} and {_describe(row)}",
                    b"",
                )
            forged = _find_forged(key, chain, seq, previous, rows, bytes(rows[0]["link_hash"]))
            return f"{where}: forged row {_describe(forged)} (a second row claims position {index})", b""
        seen_index[index] = row
        hashes.append(digest)
    for position in range(expected_rows):
        if position not in seen_index:
            before = seen_index.get(position - 1)
            after = seen_index.get(position + 1)
            around = ", ".join(
                part
                for part in (
                    f"after source offset {before['source_offset']}" if before else "",
                    f"before source offset {after['source_offset']}" if after else "",
                )
                if part
            )
            return f"{where}: row #{position} of {expected_rows} was deleted ({around or 'only row'})", b""
    if len(rows) > expected_rows:
        forged = (
            _find_forged(key, chain, seq, previous, rows, bytes(rows[0]["link_hash"])) if key else rows[-1]
        )
        return (
            f"{where}: forged row {_describe(forged)} (the link was written with {expected_rows} rows)",
            b"",
        )
    if key is None:  # no chain key (verify with the public key only): the Merkle check covers the links
        return None, previous
    computed = link_hash(key, chain, seq, previous, hashes)
    stored = {bytes(row["link_hash"]) for row in rows}
    if stored != {computed}:
        return f"{where}: link hash does not match (rows forged, reordered or the chain rewritten)", computed
    return None, computed


def _find_forged(
    key: bytes, chain: str, seq: int, previous: bytes, rows: list[dict[str, Any]], stored: bytes
) -> dict[str, Any]:
    """The row whose removal makes the link verify again (rows were hashed in position order)."""
    hashes = [bytes(row["row_hash"]) for row in rows]
    for skip in range(len(rows)):
        if link_hash(key, chain, seq, previous, hashes[:skip] + hashes[skip + 1 :]) == stored:
            return rows[skip]
    return rows[-1]


def verify_store(
    store: AuditStore, window_rows: int = _WINDOW_ROWS, merkle: MerkleCheck | None = None
) -> VerifyReport:
    """Verify the whole store. Never raises: a store that cannot be read sets `error` instead."""
    report = VerifyReport()
    for _ in verification(store, report, window_rows, merkle):
        pass
    return report


def verification(
    store: AuditStore,
    report: VerifyReport,
    window_rows: int = _WINDOW_ROWS,
    merkle: MerkleCheck | None = None,
) -> Iterator[None]:
    """The verification as steps: each `next()` runs one query (the link index, then one window of
    about `window_rows` rows) and fills `report`. A writer that shares the store's thread runs the
    steps one at a time, so its inserts wait for one window, never for the whole store. The link
    index is read first: links written while it runs are not read (verified by the next verify)."""
    report.checks = [name for name, on in (("hmac", bool(store.key)), ("merkle", merkle is not None)) if on]
    if merkle is not None and merkle.witnessed:
        report.checks.append("witness")
    try:
        yield from _verify_chains(store, report, window_rows, merkle)
        if merkle is not None:
            report.checkpoints = merkle.checked_links
    except Exception as exc:  # a store that fails mid-way must give a verdict, not a traceback
        report.error = f"the store could not be read to the end: {type(exc).__name__}: {exc}"


def _link_index(store: AuditStore) -> dict[str, list[tuple[int, int, int, int, int]]]:
    _, index_rows = store.query(
        f"SELECT chain_id, chain_seq, count(), min(link_rows), max(link_rows), uniqExact(link_hash) "
        f"FROM {store.table} GROUP BY chain_id, chain_seq ORDER BY chain_id, chain_seq"
    )
    chains: dict[str, list[tuple[int, int, int, int, int]]] = {}
    for chain, seq, count, min_rows, max_rows, distinct in index_rows:
        chains.setdefault(str(chain), []).append(
            (int(seq), int(count), int(min_rows), int(max_rows), int(distinct))
        )
    return chains


def _index_problem(chain: str, links: list[tuple[int, int, int, int, int]]) -> str | None:
    for expected, (seq, _count, min_rows, max_rows, distinct) in enumerate(links, start=1):
        if seq != expected:
            return f"chain {chain}: link {expected} is missing (the next link is {seq})"
        if min_rows != max_rows:
            return f"chain {chain} link {seq}: rows disagree on the link's size (forged rows)"
        if distinct != 1:
            # all of a link's rows carry its one link hash: seen without the chain key, so that a
            # verify with the public key only also notices a row's link hash altered
            return f"chain {chain} link {seq}: rows disagree on the link's hash (a row's link hash altered)"
    return None


def _verify_chains(
    store: AuditStore, report: VerifyReport, window_rows: int, merkle: MerkleCheck | None
) -> Iterator[None]:
    chains = _link_index(store)
    select = _select_list(store.columns)
    report.chains = len(chains)
    report.links = sum(len(links) for links in chains.values())
    yield
    problem = merkle.missing_chains(list(chains)) if merkle is not None else None
    if problem:
        report.problems.append(problem)
        return
    for chain, links in chains.items():
        problem = _index_problem(chain, links)
        if problem:
            report.problems.append(problem)
            return
        if not (yield from _verify_chain(store, report, window_rows, merkle, chain, links, select)):
            return
        problem = merkle.end_chain(chain, links[-1][0]) if merkle is not None else None
        if problem:
            report.problems.append(problem)
            return


def _verify_chain(
    store: AuditStore,
    report: VerifyReport,
    window_rows: int,
    merkle: MerkleCheck | None,
    chain: str,
    links: list[tuple[int, int, int, int, int]],
    select: str,
) -> Generator[None, None, bool]:
    """One chain's rows, window by window; returns False at the first problem (in the report)."""
    key = store.key or None
    previous = GENESIS
    for window in _windows(links, window_rows):
        first, last = window[0][0], window[-1][0]
        rows_by_seq: dict[int, list[dict[str, Any]]] = {}
        for row in store.stream(
            f"SELECT {select} FROM {store.table} WHERE chain_id = {{chain:String}} "
            f"AND chain_seq BETWEEN {{first:UInt64}} AND {{last:UInt64}} "
            f"ORDER BY chain_seq, link_index, source_offset",
            {"chain": chain, "first": first, "last": last},
        ):
            rows_by_seq.setdefault(int(row["chain_seq"]), []).append(row)
        for seq, _count, expected_rows, _max, _distinct in window:
            rows = rows_by_seq.get(seq, [])
            report.rows += len(rows)
            problem, computed = verify_link_rows(key, chain, seq, previous, expected_rows, rows)
            if problem is None and merkle is not None:
                problem = merkle.link(chain, seq, [bytes(row["row_hash"]) for row in rows])
            if problem:
                report.problems.append(problem)
                return False
            previous = computed
        yield
    return True


def _windows(
    links: list[tuple[int, int, int, int, int]], window_rows: int
) -> Iterator[list[tuple[int, int, int, int, int]]]:
    window: list[tuple[int, int, int, int, int]] = []
    size = 0
    for link in links:
        window.append(link)
        size += link[1]
        if size >= window_rows:
            yield window
            window, size = [], 0
    if window:
        yield window


__all__ = ["VerifyReport", "verification", "verify_link_rows", "verify_store"]
