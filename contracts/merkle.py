"""The Merkle tree of RFC 9162 (Certificate Transparency 2.0), section 2.1: hashes, proofs and
their verification, over any store of subtree hashes.

A tree of ``size`` leaves is kept as the hashes of its *perfect* subtrees: ``node(level, index)``
is the hash of the subtree over leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0
holds the leaf hashes. Each appended leaf adds one node per trailing one bit of its index (two
on average), every root and proof is computed from O(log² size) of them, and nothing here
depends on where they are kept (a SQLite table, a dict).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

NodeAt = Callable[[int, int], bytes]  # (level, index) -> hash of that perfect subtree
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = SHA-256()


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_hash(start: int, end: int, node: NodeAt) -> bytes:
    """MTH(D[start:end]) where ``start`` is a multiple of the subtree's split (as every range of
    a root or a proof is)."""
    n = end - start
    if n & (n - 1) == 0 and start % n == 0:
        return node(n.bit_length() - 1, start // n)
    k = _split(n)
    return node_hash(range_hash(start, start + k, node), range_hash(start + k, end, node))


def root(size: int, node: NodeAt) -> bytes:
    """The tree head of the first ``size`` leaves."""
    return EMPTY_ROOT if size == 0 else range_hash(0, size, node)


def inclusion_proof(index: int, size: int, node: NodeAt) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 2.1.3.1, nearest the leaf first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:  # walk down, collecting the sibling of each step
        k = _split(end - start)
        if index - start < k:
            proof.append(range_hash(start + k, end, node))
            end = start + k
        else:
            proof.append(range_hash(start, start + k, node))
            start += k
    return proof[::-1]


def consistency_proof(old: int, new: int, node: NodeAt) -> list[bytes]:
    """PROOF(old, D[new]) of RFC 9162 2.1.4.1; empty when ``old`` is 0 or ``new``."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    if old in (0, new):
        return []
    proof: list[bytes] = []
    start, end, whole = 0, new, True  # SUBPROOF(old - start, D[start:end], whole)
    while end - start != old - start:
        k = _split(end - start)
        if old - start <= k:
            proof.append(range_hash(start + k, end, node))
            end = start + k
        else:
            proof.append(range_hash(start, start + k, node))
            start += k
            whole = False
    if not whole:
        proof.append(range_hash(start, end, node))
    return proof[::-1]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` put the leaf hash ``leaf`` at ``index`` of the tree of
    ``size`` leaves whose head is ``expected_root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == expected_root


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: is the tree of ``old`` leaves with head ``old_root`` a prefix of the
    tree of ``new`` leaves with head ``new_root``?"""
    if not 0 < old < new:  # the trivial cases: nothing to prove
        trivial = old_root == (new_root if old == new else EMPTY_ROOT)
        return 0 <= old <= new and not proof and trivial
    path = list(proof)
    if not path:
        return False
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0


def appended(size: int, leaves: Iterable[bytes], node: NodeAt) -> dict[tuple[int, int], bytes]:
    """The nodes to add when the leaf hashes ``leaves`` follow a tree of ``size``: every
    ``(level, index) -> hash`` that becomes a perfect subtree. Reads at most the O(log size)
    left siblings that were perfect before (the tree's right frontier)."""
    new: dict[tuple[int, int], bytes] = {}
    for offset, h in enumerate(leaves):
        index, level = size + offset, 0
        new[(0, index)] = h
        while index & 1:
            sibling = new.get((level, index - 1)) or node(level, index - 1)
            h = node_hash(sibling, h)
            index, level = index >> 1, level + 1
            new[(level, index)] = h
    return new


class CompactRange:
    """A tree grown leaf by leaf in memory, keeping only its right frontier (O(log n) hashes):
    the head of every prefix without storing the tree (an audit's recomputation)."""

    def __init__(self) -> None:
        self.size = 0
        self._peaks: list[bytes] = []  # perfect subtrees, largest first

    def append(self, leaf: bytes) -> None:
        h, index = leaf, self.size
        while index & 1:
            h = node_hash(self._peaks.pop(), h)
            index >>= 1
        self._peaks.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        h = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            h = node_hash(peak, h)
        return h
