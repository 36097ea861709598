"""Merkle trees of RFC 6962 / RFC 9162 §2.1: hashing, proofs, and the appender a log writer keeps.

Hashing (RFC 9162 §2.1.1): a leaf is `SHA-256(0x00 || leaf input)`, an interior node
`SHA-256(0x01 || left || right)`, the root of the empty tree `SHA-256("")`. A tree of n leaves splits
at k, the largest power of two below n: its root is `node(root(leaves[:k]), root(leaves[k:]))`.

Nodes are named by `NodeId(level, position)`: the complete (perfect) subtree of 2**level leaves
that starts at leaf `position * 2**level`. Only complete subtrees ever get such a name, and their hashes never
change once their last leaf is appended, so a store can keep them append-only (sinks/merkle_store.py)
and read any proof as a handful of point reads: every element of an inclusion or consistency proof
is the hash of a range of leaves `[start, end)`, and `perfect_subtrees(start, end)` names the at most
log2(n) complete subtrees whose fold (`fold_range`) gives it. A range is either complete itself (one
node) or the right edge of the tree (`end` = the tree size), which is folded from a few nodes.

The functions come in three kinds, all pure:
- what a proof needs: `inclusion_ranges`, `consistency_ranges`, `perfect_subtrees`, `proof_nodes`,
  `inclusion_nodes` (the nodes of many inclusion proofs at once);
- building a proof from node hashes looked up by id: `inclusion_proof`, `consistency_proof`
  (`Nodes` is any mapping from `NodeId` to hash: a dict from `tree_nodes`, or what a store read);
- checking a proof with nothing but the leaf, the sizes and the roots: `verify_inclusion`,
  `verify_consistency` (RFC 9162 §2.1.3.2 and §2.1.4.2), which raise ProofError.
`CompactRange` is the writer's state: the hashes of the complete subtrees of the tree so far (one per
set bit of its size, O(log n)); `extend` appends a batch of leaves and returns every node the batch
completed, for the store, with the root after the batch.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


class NodeId(NamedTuple):
    """The complete subtree of 2**level leaves starting at leaf position * 2**level (the
    position-th node of its level, from 0)."""

    level: int
    position: int

    @property
    def start(self) -> int:
        return self.position << self.level

    @property
    def end(self) -> int:
        return (self.position + 1) << self.level


Nodes = Mapping[NodeId, bytes]


class ProofError(ValueError):
    """A proof does not prove what it claims (or the sizes cannot have one)."""


def leaf_hash(leaf_input: bytes) -> bytes:
    return _sha256(LEAF_PREFIX + leaf_input).digest()


def leaf_hashes(leaf_inputs: Sequence[bytes]) -> list[bytes]:
    """`leaf_hash` of each input, in one loop (the writer's hot path)."""
    sha256, prefix = _sha256, LEAF_PREFIX
    return [sha256(prefix + data).digest() for data in leaf_inputs]


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(NODE_PREFIX + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two strictly below `size` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def perfect_subtrees(start: int, end: int) -> list[NodeId]:
    """The complete subtrees that tile leaves [start, end), left to right, largest first.

    Defined for the ranges proofs use: `start` aligned to a power of two at least `end - start`
    (then the tiling follows the binary digits of `end - start`), which covers every subtree of the
    RFC's recursive split. Raises ValueError for any other range."""
    if not 0 <= start < end:
        raise ValueError(f"empty or negative range [{start}, {end})")
    width = end - start
    if start and start & -start < width:
        raise ValueError(f"range [{start}, {end}) is not a subtree of an RFC 6962 tree")
    nodes = []
    position = start
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            nodes.append(NodeId(level, position >> level))
            position += 1 << level
    return nodes


def fold_range(hashes: Sequence[bytes]) -> bytes:
    """The root of the leaves a `perfect_subtrees` tiling covers, from the tiles' hashes."""
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = _sha256(NODE_PREFIX + left + root).digest()
    return root


def range_hash(start: int, end: int, nodes: Nodes) -> bytes:
    """The root of leaves [start, end) from the node hashes (KeyError names a node that is missing)."""
    return fold_range([nodes[node] for node in perfect_subtrees(start, end)])


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form the inclusion proof of leaf `index` in a tree of `size`
    leaves (RFC 9162 §2.1.3.1, PATH), bottom up. Raises ValueError for an index not in the tree."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    ranges = []
    start, end = 0, size
    while end - start > 1:
        split = start + _split(end - start)
        if index < split:
            ranges.append((split, end))
            end = split
        else:
            ranges.append((start, split))
            start = split
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form the consistency proof from a tree of `old_size` leaves to
    one of `new_size` (RFC 9162 §2.1.4.1, SUBPROOF), in proof order. Empty when there is nothing to
    prove (old_size 0 or equal sizes). Raises ValueError when old_size > new_size."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from {old_size} leaves to {new_size}")
    if old_size in (0, new_size):
        return []
    ranges = []
    start, end, complete = 0, new_size, True
    while True:
        if old_size == end:  # the old tree's subtree is a node of the new tree
            if not complete:
                ranges.append((start, end))
            break
        split = start + _split(end - start)
        if old_size <= split:
            ranges.append((split, end))
            end = split
        else:
            ranges.append((start, split))
            start, complete = split, False
    ranges.reverse()
    return ranges


def proof_nodes(ranges: Sequence[tuple[int, int]]) -> list[NodeId]:
    """Every node a proof of these ranges reads, without repeats, in order: one query's worth."""
    return list(dict.fromkeys(node for start, end in ranges for node in perfect_subtrees(start, end)))


def inclusion_nodes(indices: Iterable[int], size: int) -> dict[int, set[int]]:
    """Every node the inclusion proofs of these leaves read in a tree of `size` leaves, once each,
    as level -> positions: the nodes `proof_nodes` names for all their `inclusion_ranges`, without
    building each proof (a receipt's 10,000 proofs share their upper levels; sets of ints, not
    NodeIds: a receipt's ~100,000 nodes cost ~0.2 s as NodeIds). At level l, leaf i's proof holds
    the sibling s = (i >> l) ^ 1 of its ancestor, clipped to the tree: the node (l, s) when it ends
    within the tree (s < size >> l), the tiling of [s << l, size) when it starts inside the tree
    and ends past it (the tree's right edge), nothing when it starts past the last leaf.
    Raises ValueError for an index not in the tree."""
    positions = set(indices)
    outside = [index for index in positions if not 0 <= index < size]
    if outside:
        raise ValueError(f"leaf {min(outside)} is not in a tree of {size} leaves")
    nodes: dict[int, set[int]] = defaultdict(set)
    for level in range(size.bit_length()):
        limit = size >> level  # the complete nodes of this level are 0 .. limit - 1
        nodes[level].update({position ^ 1 for position in positions if position ^ 1 < limit})
        if limit ^ 1 in positions and limit << level < size:
            for node in perfect_subtrees(limit << level, size):
                nodes[node.level].add(node.position)
        positions = {position >> 1 for position in positions}
    return {level: found for level, found in nodes.items() if found}


def inclusion_proof(index: int, size: int, nodes: Nodes) -> list[bytes]:
    return [range_hash(start, end, nodes) for start, end in inclusion_ranges(index, size)]


def consistency_proof(old_size: int, new_size: int, nodes: Nodes) -> list[bytes]:
    return [range_hash(start, end, nodes) for start, end in consistency_ranges(old_size, new_size)]


def tree_nodes(hashes_of_leaves: Sequence[bytes]) -> dict[NodeId, bytes]:
    """Every complete subtree of a tree with these leaf hashes (what a store holds for it)."""
    return dict(CompactRange().extend(hashes_of_leaves).nodes())


def root_of(hashes_of_leaves: Sequence[bytes]) -> bytes:
    """The root of a tree with these leaf hashes (RFC 9162 §2.1.1)."""
    compact = CompactRange()
    compact.extend(hashes_of_leaves)
    return compact.root()


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} is {len(value)} bytes, not {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` makes of leaf hash `leaf` at `index` (RFC 9162 §2.1.3.2). Raises ProofError."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    _check_hash("the leaf hash", leaf)
    fn, sn, root = index, size - 1, leaf
    for position, sibling in enumerate(proof):
        _check_hash(f"proof element {position}", sibling)
        if sn == 0:
            raise ProofError(f"the proof is longer than a tree of {size} leaves allows")
        if fn & 1 or fn == sn:
            root = _sha256(NODE_PREFIX + sibling + root).digest()
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            root = _sha256(NODE_PREFIX + root + sibling).digest()
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the proof is shorter than a tree of {size} leaves needs")
    return root


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Leaf hash `leaf` is at `index` in the tree of `size` leaves whose root is `root`, or ProofError."""
    _check_hash("the root", root)
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError(f"the inclusion proof of leaf {index} does not lead to the tree's root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """The tree of `new_size` leaves with root `new_root` extends the one of `old_size` with root
    `old_root` (RFC 9162 §2.1.4.2), or ProofError."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"a tree of {old_size} leaves cannot be extended by one of {new_size}")
    _check_hash("the old root", old_root)
    _check_hash("the new root", new_root)
    if old_size == new_size or old_size == 0:
        if proof:
            raise ProofError("the proof must be empty for these sizes")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size}")
        return
    if not proof:
        raise ProofError(f"an empty proof cannot show that {new_size} leaves extend {old_size}")
    for position, element in enumerate(proof):
        _check_hash(f"proof element {position}", element)
    path = [old_root, *proof] if old_size & (old_size - 1) == 0 else list(proof)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    old, new = path[0], path[0]
    for element in path[1:]:
        if sn == 0:
            raise ProofError(f"the proof is longer than {old_size} -> {new_size} leaves allows")
        if fn & 1 or fn == sn:
            old = _sha256(NODE_PREFIX + element + old).digest()
            new = _sha256(NODE_PREFIX + element + new).digest()
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            new = _sha256(NODE_PREFIX + new + element).digest()
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the proof is shorter than {old_size} -> {new_size} leaves needs")
    if old != old_root:
        raise ProofError(f"the consistency proof does not lead to the old root (size {old_size})")
    if new != new_root:
        raise ProofError(f"the consistency proof does not lead to the new root (size {new_size})")


class LevelRun(NamedTuple):
    """Consecutive nodes of one level: `hashes[i]` is node (level, first + i)."""

    level: int
    first: int
    hashes: list[bytes]


@dataclass(frozen=True, slots=True)
class Extension:
    """What appending a batch of leaves did: every node it completed, level by level from the
    leaves (level 0) up, and the size and root of the tree after the batch."""

    runs: list[LevelRun]
    size: int
    root: bytes

    @property
    def count(self) -> int:
        return sum(len(run.hashes) for run in self.runs)

    def nodes(self) -> list[tuple[NodeId, bytes]]:
        return [
            (NodeId(run.level, run.first + offset), digest)
            for run in self.runs
            for offset, digest in enumerate(run.hashes)
        ]


class CompactRange:
    """The right edge of a growing tree: the hashes of its complete subtrees, one per set bit of
    its size, largest (leftmost) first. Enough to append leaves and know the root; O(log n) state.

    A writer that restarts rebuilds it from the store: `CompactRange.of(size, hashes)` with the
    hashes of `perfect_subtrees(0, size)`."""

    __slots__ = ("_hashes", "size")

    def __init__(self) -> None:
        self.size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def of(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """The compact range of a tree of `size` leaves from the hashes of `frontier(size)`."""
        expected = bin(size).count("1")
        if size < 0 or len(hashes) != expected:
            raise ValueError(f"a tree of {size} leaves has {expected} frontier nodes, not {len(hashes)}")
        compact = cls()
        compact.size, compact._hashes = size, list(hashes)
        return compact

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def root(self) -> bytes:
        return fold_range(self._hashes) if self._hashes else EMPTY_ROOT

    def extend(self, new_leaves: Sequence[bytes]) -> Extension:
        """Append these leaf hashes; return every node they complete and the new root.

        Level by level: the nodes completed at one level are the pairs of the level below, the
        first pair taking its left child from the old right edge when the batch starts on an odd
        index. About one node hash per leaf."""
        old, new = self.size, self.size + len(new_leaves)
        if not new_leaves:
            return Extension([], old, self.root())
        by_level = self._frontier_by_level()
        sha256, prefix = _sha256, NODE_PREFIX
        runs: list[LevelRun] = []
        level, first, hashes = 0, old, list(new_leaves)
        while hashes:
            runs.append(LevelRun(level, first, hashes))
            if first & 1:
                hashes = [by_level[level], *hashes]
                first -= 1
            pairs = zip(hashes[0::2], hashes[1::2], strict=False)  # an odd last one waits for its sibling
            hashes = [sha256(prefix + left + right).digest() for left, right in pairs]
            level, first = level + 1, first >> 1
        self._hashes = [_last_of(runs, node) or by_level[node.level] for node in frontier(new)]
        self.size = new
        return Extension(runs, new, self.root())

    def _frontier_by_level(self) -> dict[int, bytes]:
        return {node.level: digest for node, digest in zip(frontier(self.size), self._hashes, strict=True)}


def _last_of(runs: list[LevelRun], node: NodeId) -> bytes | None:
    """The hash of `node` if a run made it (a frontier node is the last of its level's run)."""
    if node.level < len(runs):
        run = runs[node.level]
        if run.first + len(run.hashes) - 1 == node.position:
            return run.hashes[-1]
    return None


def frontier(size: int) -> list[NodeId]:
    """The complete subtrees of a tree of `size` leaves that no later leaf changes: its right edge."""
    return perfect_subtrees(0, size) if size else []
