"""The Merkle tree code (`domain.merkle`) against RFC 6962's test vectors and the RFC's own definitions.

The vectors (tests/data/merkle/rfc6962_vectors.yaml) are the classic 8-leaf ones, with their
source. The properties are checked by enumeration, for every tree size up to 64 and a few larger
ones: every inclusion proof and every consistency proof verifies, equals what the RFC's recursive
definitions (written out again below, independently of the module) give, and fails once tampered
with; the appender, fed in batches of any split, gives the nodes and root of the whole tree.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from flowaudit.domain.merkle import (
    EMPTY_ROOT,
    CompactRange,
    NodeId,
    ProofError,
    consistency_proof,
    consistency_ranges,
    frontier,
    inclusion_nodes,
    inclusion_proof,
    inclusion_ranges,
    leaf_hash,
    leaf_hashes,
    node_hash,
    perfect_subtrees,
    proof_nodes,
    root_from_inclusion,
    root_of,
    tree_nodes,
    verify_consistency,
    verify_inclusion,
)
from tests.conftest import read_data

VECTORS: dict[str, Any] = read_data("merkle/rfc6962_vectors.yaml")
SIZES = [*range(1, 65), 100, 127, 128, 129, 255, 256, 257, 1000, 1023, 1024, 1025]


def _hex(values: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(value) for value in values]


# --- RFC 9162 §2.1, written the way the RFC defines it (recursive, from all the leaves) -------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = _k(len(leaves))
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = _k(len(leaves))
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [_mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def _inputs(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(0, 40)) for _ in range(count)]


# --- the published vectors ------------------------------------------------------------------------


def test_the_vectors_file_holds_hashes() -> None:
    digests = [VECTORS["empty_root"], *VECTORS["roots"]]
    digests += [p for case in VECTORS["inclusion"] + VECTORS["consistency"] for p in case["proof"]]
    assert all(isinstance(d, str) and len(bytes.fromhex(d)) == 32 for d in digests)
    assert len(VECTORS["leaves"]) == 8 and len(VECTORS["roots"]) == 8


def test_roots_of_the_vectors() -> None:
    hashes = leaf_hashes(_hex(VECTORS["leaves"]))
    assert root_of([]) == EMPTY_ROOT == bytes.fromhex(VECTORS["empty_root"])
    for size, expected in enumerate(_hex(VECTORS["roots"]), start=1):
        assert root_of(hashes[:size]) == expected, size


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"leaf{c['leaf']}-of-{c['size']}")
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    hashes = leaf_hashes(_hex(VECTORS["leaves"]))
    index, size, proof = case["leaf"], case["size"], _hex(case["proof"])
    root = bytes.fromhex(VECTORS["roots"][size - 1])
    assert inclusion_proof(index, size, tree_nodes(hashes[:size])) == proof
    verify_inclusion(index, size, hashes[index], proof, root)
    _assert_inclusion_tampering_fails(index, size, hashes[index], proof, root)


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['old']}-to-{c['new']}")
def test_consistency_vectors(case: dict[str, Any]) -> None:
    hashes = leaf_hashes(_hex(VECTORS["leaves"]))
    old, new, proof = case["old"], case["new"], _hex(case["proof"])
    roots = _hex(VECTORS["roots"])
    assert consistency_proof(old, new, tree_nodes(hashes[:new])) == proof
    verify_consistency(old, new, roots[old - 1], roots[new - 1], proof)
    if proof:
        _assert_consistency_tampering_fails(old, new, roots[old - 1], roots[new - 1], proof)


# --- properties, by enumeration -------------------------------------------------------------------


def _fails(check: Callable[[], None]) -> bool:
    try:
        check()
    except ProofError:
        return True
    return False


def _flipped(proof: list[bytes], position: int) -> list[bytes]:
    changed = list(proof)
    changed[position] = bytes([changed[position][0] ^ 8]) + changed[position][1:]
    return changed


def _assert_inclusion_tampering_fails(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> None:
    other = hashlib.sha256(b"another").digest()
    wrong: list[tuple[str, Callable[[], None]]] = [
        ("wrong leaf", lambda: verify_inclusion(index, size, other, proof, root)),
        ("wrong root", lambda: verify_inclusion(index, size, leaf, proof, other)),
        ("index + 1", lambda: verify_inclusion(index + 1, size, leaf, proof, root)),
        ("size * 2", lambda: verify_inclusion(index, size * 2, leaf, proof, root)),
        ("trailing root", lambda: verify_inclusion(index, size, leaf, [*proof, root], root)),
        ("preceding root", lambda: verify_inclusion(index, size, leaf, [root, *proof], root)),
        ("short hash", lambda: verify_inclusion(index, size, leaf[:31], proof, root)),
    ]
    if index:
        wrong.append(("index - 1", lambda: verify_inclusion(index - 1, size, leaf, proof, root)))
    if size > 1:
        wrong.append(("size // 2", lambda: verify_inclusion(index, size // 2, leaf, proof, root)))
    if proof:
        wrong.append(("removed element", lambda: verify_inclusion(index, size, leaf, proof[:-1], root)))
    for position in range(len(proof)):
        tampered = _flipped(proof, position)
        wrong.append((f"bit of {position}", lambda t=tampered: verify_inclusion(index, size, leaf, t, root)))
    accepted = [name for name, check in wrong if not _fails(check)]
    assert not accepted, (index, size, accepted)


def _assert_consistency_tampering_fails(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    def check(o: int, n: int, r1: bytes, r2: bytes, p: list[bytes]) -> Callable[[], None]:
        return lambda: verify_consistency(o, n, r1, r2, p)

    other = hashlib.sha256(b"another").digest()
    wrong = {
        "old - 1": check(old - 1, new, old_root, new_root, proof),
        "old + 1": check(old + 1, new, old_root, new_root, proof),
        "new * 2": check(old, new * 2, old_root, new_root, proof),
        "wrong old root": check(old, new, other, new_root, proof),
        "wrong new root": check(old, new, old_root, other, proof),
        "swapped roots": check(old, new, new_root, old_root, proof),
        "empty proof": check(old, new, old_root, new_root, []),
        "truncated": check(old, new, old_root, new_root, proof[:-1]),
        "trailing root": check(old, new, old_root, new_root, [*proof, new_root]),
        "preceding element": check(old, new, old_root, new_root, [proof[0], *proof]),
    }
    if new // 2 > old:
        wrong["new // 2"] = check(old, new // 2, old_root, new_root, proof)
    for position in range(len(proof)):
        wrong[f"bit of {position}"] = check(old, new, old_root, new_root, _flipped(proof, position))
    accepted = [name for name, probe in wrong.items() if not _fails(probe)]
    assert not accepted, (old, new, accepted)


@pytest.mark.parametrize("size", SIZES)
def test_every_inclusion_proof_verifies_matches_the_rfc_and_fails_when_tampered(size: int) -> None:
    inputs = _inputs(size)
    hashes = leaf_hashes(inputs)
    nodes = tree_nodes(hashes)
    root = root_of(hashes)
    assert root == _mth(inputs)
    indices = range(size) if size <= 256 else random.Random(size).sample(range(size), 64)
    for index in indices:
        proof = inclusion_proof(index, size, nodes)
        assert proof == _path(index, inputs), (index, size)
        verify_inclusion(index, size, hashes[index], proof, root)
        if size <= 64 or index % 16 == 0:
            _assert_inclusion_tampering_fails(index, size, hashes[index], proof, root)


@pytest.mark.parametrize("size", SIZES)
def test_every_consistency_proof_verifies_matches_the_rfc_and_fails_when_tampered(size: int) -> None:
    inputs = _inputs(size, seed=size)
    hashes = leaf_hashes(inputs)
    nodes = tree_nodes(hashes)
    root = root_of(hashes)
    olds = range(size + 1) if size <= 256 else [0, 1, 2, 3, size // 3, size // 2, size - 1, size]
    for old in olds:
        proof = consistency_proof(old, size, nodes)
        assert proof == (_subproof(old, inputs, True) if old > 0 else []), (old, size)
        old_root = root_of(hashes[:old])
        verify_consistency(old, size, old_root, root, proof)
        if proof and (size <= 64 or old % 7 == 0):
            _assert_consistency_tampering_fails(old, size, old_root, root, proof)


def test_consistency_with_nothing_to_prove() -> None:
    root = root_of(leaf_hashes([b"a", b"b"]))
    verify_consistency(0, 2, EMPTY_ROOT, root, [])
    verify_consistency(2, 2, root, root, [])
    for old, new, old_root, new_root, proof in [
        (2, 2, root, EMPTY_ROOT, []),  # two roots for one size
        (2, 2, root, root, [root]),  # equal sizes take no proof
        (0, 2, EMPTY_ROOT, root, [root]),
        (3, 2, root, root, []),  # shrinking
    ]:
        with pytest.raises(ProofError):
            verify_consistency(old, new, old_root, new_root, proof)


def test_inclusion_outside_the_tree_fails() -> None:
    leaf = leaf_hash(b"x")
    for index, size in [(0, 0), (1, 1), (5, 3), (-1, 4)]:
        with pytest.raises(ProofError, match="not in a tree"):
            root_from_inclusion(index, size, leaf, [])
    verify_inclusion(0, 1, leaf, [], leaf)  # a tree of one leaf: the leaf is the root


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 63, 64, 65, 1000, 4097])
def test_the_appender_in_batches_gives_the_nodes_and_root_of_the_whole_tree(size: int) -> None:
    hashes = leaf_hashes(_inputs(size, seed=size + 1))
    expected_nodes = tree_nodes(hashes)
    assert expected_nodes == _nodes_by_definition(hashes)
    rng = random.Random(size)
    for _ in range(5):
        compact, seen, position = CompactRange(), {}, 0
        while position < size:
            batch = hashes[position : position + rng.choice([1, 2, 3, 5, 16, 33, 500])]
            extension = compact.extend(batch)
            position += len(batch)
            assert extension.size == compact.size == position
            assert extension.root == compact.root() == root_of(hashes[:position])
            assert extension.count == len(extension.nodes())
            for node, digest in extension.nodes():
                assert node not in seen, node  # each node is made once
                seen[node] = digest
            # the state is the right edge: a writer that restarts rebuilds it from stored nodes
            assert compact.hashes == tuple(seen[node] for node in frontier(position))
            resumed = CompactRange.of(position, [expected_nodes[n] for n in frontier(position)])
            assert resumed.root() == compact.root()
        assert seen == expected_nodes


def _nodes_by_definition(hashes: Sequence[bytes]) -> dict[NodeId, bytes]:
    """Every complete subtree, level by level from the leaves (no shared code with the appender)."""
    nodes = {NodeId(0, i): h for i, h in enumerate(hashes)}
    level, row = 0, list(hashes)
    while len(row) > 1:
        row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row) - 1, 2)]
        level += 1
        nodes.update({NodeId(level, i): h for i, h in enumerate(row)})
    return nodes


def test_an_empty_batch_changes_nothing_and_a_bad_frontier_is_refused() -> None:
    compact = CompactRange()
    assert compact.extend([]).root == EMPTY_ROOT and compact.size == 0
    with pytest.raises(ValueError, match="frontier nodes"):
        CompactRange.of(6, [EMPTY_ROOT])  # 6 = 4 + 2: two nodes


def test_subtree_tilings_and_what_a_proof_reads() -> None:
    assert perfect_subtrees(0, 6) == [NodeId(2, 0), NodeId(1, 2)]
    assert perfect_subtrees(8, 13) == [NodeId(2, 2), NodeId(0, 12)]
    assert frontier(0) == [] and frontier(1) == [NodeId(0, 0)]
    for start, end in [(3, 5), (2, 6), (5, 5)]:  # not subtrees of any RFC 6962 tree
        with pytest.raises(ValueError):
            perfect_subtrees(start, end)
    # O(log n): a proof in a tree of a million leaves reads a few dozen nodes
    size = 1_000_003
    ranges = consistency_ranges(654_321, size)
    assert len(proof_nodes(ranges)) <= 2 * size.bit_length()


def _levelled(nodes: Sequence[NodeId]) -> dict[int, set[int]]:
    levels: dict[int, set[int]] = {}
    for node in nodes:
        levels.setdefault(node.level, set()).add(node.position)
    return levels


@pytest.mark.parametrize("size", SIZES)
def test_the_nodes_of_many_inclusion_proofs_are_those_the_proofs_read(size: int) -> None:
    """`inclusion_nodes` (a receipt's nodes, level by level) names exactly the nodes the proofs of
    its leaves fold from: one leaf at a time, every leaf, and random subsets, for every size to 64."""
    rng = random.Random(size)
    singles = range(size) if size <= 64 else rng.sample(range(size), 16)
    for index in singles:
        assert inclusion_nodes([index], size) == _levelled(proof_nodes(inclusion_ranges(index, size)))
    subsets = [list(range(size)), *(rng.sample(range(size), rng.randint(1, size)) for _ in range(8))]
    for leaves in subsets:
        ranges = [r for index in leaves for r in inclusion_ranges(index, size)]
        assert inclusion_nodes(leaves, size) == _levelled(proof_nodes(ranges)), (size, sorted(leaves))


def test_the_nodes_of_inclusion_proofs_in_a_large_tree_and_of_leaves_outside_it() -> None:
    size = 2_500_003  # leaves spread over a large tree, as a long-lived subject's are
    leaves = [*range(0, size, 2_501), size - 1, size - 2]
    ranges = [r for index in leaves for r in inclusion_ranges(index, size)]
    assert inclusion_nodes(leaves, size) == _levelled(proof_nodes(ranges))
    assert inclusion_nodes([], size) == {}
    for outside in ([size], [-1], [0, size + 5]):
        with pytest.raises(ValueError, match="not in a tree"):
            inclusion_nodes(outside, size)
