"""``contracts.merkle`` against RFC 9162 section 2.1 (the Merkle tree of Certificate Transparency).

Everything the module computes is checked against an *independent* reference written below
straight from the RFC's recursive definitions — MTH (2.1.1), PATH (2.1.3.1) and PROOF / SUBPROOF
(2.1.4.1) — over plain lists of leaf data, plus two reference verifiers that walk the same
recursions backwards (the root a path or a consistency proof implies). Nothing of the module is
used by the reference. On top of that, the published known-answer vectors of RFC 6962 trees.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import merkle  # moved here from worker.core.merkle

# ------------------------------------------------------------------------------------------------
# The reference: RFC 9162 2.1, on lists of leaf data.
# ------------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_leaf(data: bytes) -> bytes:
    """MTH({d(0)}) = HASH(0x00 || d(0))."""
    return _sha256(b"\x00" + data)


def ref_children(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right)


def ref_k(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): k < n <= 2k."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]), RFC 9162 2.1.1."""
    n = len(d)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return ref_leaf(d[0])
    k = ref_k(n)
    return ref_children(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]), RFC 9162 2.1.3.1 (the leaf's sibling first)."""
    n = len(d)
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b), RFC 9162 2.1.4.1."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) for 0 < m < n; empty for m in (0, n), the
    trivial cases the RFC leaves out (and the module documents as empty)."""
    return [] if m in (0, len(d)) else ref_subproof(m, d, True)


def ref_root_from_path(leaf: bytes, m: int, n: int, path: Sequence[bytes]) -> bytes | None:
    """The root PATH(m, D[n]) = ``path`` implies for the leaf hash ``leaf`` (PATH run backwards:
    its last element is the sibling at the top), or None when the path has the wrong length."""
    if n == 1:
        return None if path else leaf
    if not path:
        return None
    k, top = ref_k(n), path[-1]
    if m < k:
        sub = ref_root_from_path(leaf, m, k, path[:-1])
        return None if sub is None else ref_children(sub, top)
    sub = ref_root_from_path(leaf, m - k, n - k, path[:-1])
    return None if sub is None else ref_children(top, sub)


def ref_verify_inclusion(leaf: bytes, m: int, n: int, path: Sequence[bytes], root: bytes) -> bool:
    if not 0 <= m < n:
        return False
    return ref_root_from_path(leaf, m, n, path) == root


def ref_roots_from_subproof(
    m: int, n: int, b: bool, proof: Sequence[bytes], first: bytes
) -> tuple[bytes, bytes] | None:
    """(old subtree hash, new subtree hash) that SUBPROOF(m, D[n], b) = ``proof`` implies,
    ``first`` standing for the old tree's head where the RFC omits it (m == n with b set)."""
    if m == n:
        if b:
            return None if proof else (first, first)
        return (proof[0], proof[0]) if len(proof) == 1 else None
    if not proof:
        return None
    k, top = ref_k(n), proof[-1]
    if m <= k:
        sub = ref_roots_from_subproof(m, k, b, proof[:-1], first)
        return None if sub is None else (sub[0], ref_children(sub[1], top))
    sub = ref_roots_from_subproof(m - k, n - k, False, proof[:-1], first)
    return None if sub is None else (ref_children(top, sub[0]), ref_children(top, sub[1]))


def ref_verify_consistency(
    m: int, n: int, first: bytes, second: bytes, proof: Sequence[bytes]
) -> bool:
    if not 0 <= m <= n:
        return False
    if m == n:
        return not proof and first == second
    if m == 0:
        return not proof and first == _sha256(b"")
    return ref_roots_from_subproof(m, n, True, proof, first) == (first, second)


def ref_perfect_nodes(d: Sequence[bytes]) -> dict[tuple[int, int], bytes]:
    """Every perfect subtree of the tree over ``d``: (level, index) -> MTH of its leaves."""
    nodes: dict[tuple[int, int], bytes] = {}
    level = 0
    while 1 << level <= len(d):
        width = 1 << level
        for index in range(len(d) // width):
            nodes[(level, index)] = ref_mth(d[index * width : (index + 1) * width])
        level += 1
    return nodes


def ref_frontier(size: int) -> set[tuple[int, int]]:
    """The perfect subtrees a tree of ``size`` leaves is made of (one per set bit)."""
    return {(lv, (size >> lv) - 1) for lv in range(size.bit_length()) if size >> lv & 1}


def store_reader(store: dict[tuple[int, int], bytes]) -> merkle.NodeAt:
    def node(level: int, index: int) -> bytes:
        return store[(level, index)]

    return node


def no_reads(level: int, index: int) -> bytes:
    raise AssertionError(f"read node ({level}, {index})")


def flip(h: bytes, bit: int) -> bytes:
    x = bytearray(h)
    x[bit // 8] ^= 1 << (bit % 8)
    return bytes(x)


def bits_to_flip(size: int, j: int) -> Sequence[int]:
    """Every bit of a 32-byte hash for the trees of up to 8 leaves; for the larger ones (to stay
    fast) the first and last bits and four more, spread over the bytes and over the positions in
    a byte (rotated per element, so that a proof's elements cover all eight positions)."""
    if size <= 8:
        return range(256)
    return [0, *(t * 64 + 8 * j % 64 + (j + 2 * t) % 8 for t in range(4)), 255]


def data_for(count: int, salt: bytes = b"") -> list[bytes]:
    """Distinct leaf data of varied length, the empty string first."""
    return [salt + bytes(range(i % 5)) + i.to_bytes(2, "big") if i else salt for i in range(count)]


# The tree every exhaustive test runs on: 96 leaves (the published node-id vectors go to 95), its
# store built from the reference alone, so that the proofs tests do not lean on appended().
DATA = data_for(96)
REF_STORE = ref_perfect_nodes(DATA)
REF_NODE = store_reader(REF_STORE)
SIZES = range(71)
SOME_HASH = _sha256(b"some other hash")


def test_reference_agrees_with_itself() -> None:
    """The reference verifiers accept the reference proofs (a sanity check of the reference)."""
    for n in range(1, 20):
        d = DATA[:n]
        for m in range(n):
            assert ref_verify_inclusion(ref_leaf(d[m]), m, n, ref_path(m, d), ref_mth(d))
        for m in range(n + 1):
            assert ref_verify_consistency(m, n, ref_mth(d[:m]), ref_mth(d), ref_proof(m, d))


# ------------------------------------------------------------------------------------------------
# 1. Published vectors.
# ------------------------------------------------------------------------------------------------
# Source: github.com/transparency-dev/merkle, proof/verify_test.go (the `leaves`, `roots`,
# `inclusionProofs` and `consistencyProofs` tables), the same data as google/certificate-
# transparency cpp/merkletree/merkle_tree_test.cc (kInputs, kSHA256Roots, kSHA256Paths,
# kSHA256Proofs), which has all but the (6, 7) consistency proof. Leaf numbers in those
# inclusion tables are 1-based; they are converted to 0-based indices below.

VECTOR_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
VECTOR_ROOTS = [  # roots of the trees of 1..8 of those leaves
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
VECTOR_EMPTY_ROOT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
VECTOR_INCLUSION = [  # (1-based leaf, tree size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
VECTOR_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

# Source: github.com/transparency-dev/merkle, rfc6962/rfc6962_test.go (TestRFC6962Hasher).
VECTOR_HASHES = [  # (what, got, want)
    ("empty leaf", lambda: merkle.leaf_hash(b""), VECTOR_ROOTS[0].hex()),
    (
        "leaf",
        lambda: merkle.leaf_hash(b"L123456"),
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56",
    ),
    (
        "node",
        lambda: merkle.node_hash(b"N123", b"N456"),
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb",
    ),
    ("empty tree", lambda: merkle.EMPTY_ROOT, VECTOR_EMPTY_ROOT),
]

# Source: github.com/transparency-dev/merkle, proof/proof_test.go (TestInclusion, TestConsistency):
# which nodes make up a proof, as (level, index) ids, nearest the leaf first. A list of ids is
# one proof element made by "rehashing" them — Nodes.Rehash: acc = id0; acc = H(id_next, acc) —
# the hash of a subtree that is not perfect, so not stored as one node.
NodeIds = list[tuple[int, int] | list[tuple[int, int]]]
VECTOR_INCLUSION_NODES: list[tuple[int, int, NodeIds]] = [  # (size, index, ids)
    (1, 0, []),
    (2, 0, [(0, 1)]),
    (2, 1, [(0, 0)]),
    (3, 1, [(0, 0), (0, 2)]),
    (7, 0, [(0, 1), (1, 1), [(0, 6), (1, 2)]]),
    (7, 1, [(0, 0), (1, 1), [(0, 6), (1, 2)]]),
    (7, 2, [(0, 3), (1, 0), [(0, 6), (1, 2)]]),
    (7, 3, [(0, 2), (1, 0), [(0, 6), (1, 2)]]),
    (7, 4, [(0, 5), (0, 6), (2, 0)]),
    (7, 5, [(0, 4), (0, 6), (2, 0)]),
    (7, 6, [(1, 2), (2, 0)]),
    (4, 2, [(0, 3), (1, 0)]),
    (5, 3, [(0, 2), (1, 0), (0, 4)]),
    (6, 3, [(0, 2), (1, 0), (1, 2)]),
    (6, 4, [(0, 5), (2, 0)]),
    (15, 10, [(0, 11), (1, 4), [(0, 14), (1, 6)], (3, 0)]),
    (31, 24, [(0, 25), (1, 13), [(0, 30), (1, 14)], (3, 2), (4, 0)]),
    (95, 81, [(0, 80), (1, 41), (2, 21), [(0, 94), (1, 46), (2, 22)], (4, 4), (6, 0)]),
]
VECTOR_CONSISTENCY_NODES: list[tuple[int, int, NodeIds]] = [  # (old, new, ids)
    (1, 2, [(0, 1)]),
    (1, 4, [(0, 1), (1, 1)]),
    (1, 6, [(0, 1), (1, 1), (1, 2)]),
    (2, 3, [(0, 2)]),
    (2, 8, [(1, 1), (2, 1)]),
    (3, 7, [(0, 2), (0, 3), (1, 0), [(0, 6), (1, 2)]]),
    (4, 7, [[(0, 6), (1, 2)]]),
    (5, 7, [(0, 4), (0, 5), (0, 6), (2, 0)]),
    (6, 7, [(1, 2), (0, 6), (2, 0)]),
    (7, 8, [(0, 6), (0, 7), (1, 2), (2, 0)]),
    (1, 1, []),
    (2, 2, []),
    (3, 3, []),
    (4, 4, []),
    (5, 5, []),
    (7, 7, []),
    (8, 8, []),
    (2, 4, [(1, 1)]),
    (3, 5, [(0, 2), (0, 3), (1, 0), (0, 4)]),
    (3, 6, [(0, 2), (0, 3), (1, 0), (1, 2)]),
    (4, 6, [(1, 2)]),
    (1, 7, [(0, 1), (1, 1), [(0, 6), (1, 2)]]),
    (10, 15, [(1, 4), (1, 5), [(0, 14), (1, 6)], (3, 0)]),
    (24, 31, [(3, 2), [(0, 30), (1, 14), (2, 6)], (4, 0)]),
    (81, 95, [(0, 80), (0, 81), (1, 41), (2, 21), [(0, 94), (1, 46), (2, 22)], (4, 4), (6, 0)]),
]


def _vector_store() -> merkle.NodeAt:
    return store_reader(ref_perfect_nodes(VECTOR_LEAVES))


def _hexes(proof: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in proof]


@pytest.mark.parametrize(("what", "got", "want"), VECTOR_HASHES, ids=[v[0] for v in VECTOR_HASHES])
def test_hash_vectors(what: str, got: Callable[[], bytes], want: str) -> None:
    assert got().hex() == want, what


def test_root_vectors() -> None:
    node = _vector_store()
    assert merkle.root(0, node).hex() == VECTOR_EMPTY_ROOT
    for size, want in enumerate(VECTOR_ROOTS, start=1):
        assert merkle.root(size, node) == want, size
        assert ref_mth(VECTOR_LEAVES[:size]) == want, size  # the reference, too
    compact = merkle.CompactRange()
    assert compact.root().hex() == VECTOR_EMPTY_ROOT
    for size, data in enumerate(VECTOR_LEAVES, start=1):
        compact.append(merkle.leaf_hash(data))
        assert compact.root() == VECTOR_ROOTS[size - 1], size


@pytest.mark.parametrize(("leaf", "size", "proof_hex"), VECTOR_INCLUSION)
def test_inclusion_vectors(leaf: int, size: int, proof_hex: list[str]) -> None:
    index, proof, root = leaf - 1, _hexes(proof_hex), VECTOR_ROOTS[size - 1]
    leaf_h = ref_leaf(VECTOR_LEAVES[index])
    assert merkle.inclusion_proof(index, size, _vector_store()) == proof
    assert ref_path(index, VECTOR_LEAVES[:size]) == proof
    assert merkle.verify_inclusion(leaf_h, index, size, proof, root)
    assert ref_verify_inclusion(leaf_h, index, size, proof, root)
    for desc, args in bad_inclusion_probes(leaf_h, index, size, proof, root):
        assert not merkle.verify_inclusion(*args), desc
        assert not ref_verify_inclusion(*args), desc


@pytest.mark.parametrize(("old", "new", "proof_hex"), VECTOR_CONSISTENCY)
def test_consistency_vectors(old: int, new: int, proof_hex: list[str]) -> None:
    proof, old_root, new_root = _hexes(proof_hex), VECTOR_ROOTS[old - 1], VECTOR_ROOTS[new - 1]
    assert merkle.consistency_proof(old, new, _vector_store()) == proof
    assert ref_proof(old, VECTOR_LEAVES[:new]) == proof
    assert merkle.verify_consistency(old, new, old_root, new_root, proof)
    assert ref_verify_consistency(old, new, old_root, new_root, proof)
    if not proof:
        return
    for desc, args in bad_consistency_probes(old, new, old_root, new_root, proof):
        assert not merkle.verify_consistency(*args), desc
        assert not ref_verify_consistency(*args), desc


def _from_ids(ids: NodeIds) -> list[bytes]:
    out: list[bytes] = []
    for entry in ids:
        if not isinstance(entry, list):
            out.append(REF_STORE[entry])
            continue
        acc = REF_STORE[entry[0]]
        for nid in entry[1:]:
            acc = ref_children(REF_STORE[nid], acc)
        out.append(acc)
    return out


@pytest.mark.parametrize(("size", "index", "ids"), VECTOR_INCLUSION_NODES)
def test_inclusion_node_vectors(size: int, index: int, ids: NodeIds) -> None:
    assert merkle.inclusion_proof(index, size, REF_NODE) == _from_ids(ids)


@pytest.mark.parametrize(("old", "new", "ids"), VECTOR_CONSISTENCY_NODES)
def test_consistency_node_vectors(old: int, new: int, ids: NodeIds) -> None:
    assert merkle.consistency_proof(old, new, REF_NODE) == _from_ids(ids)


# ------------------------------------------------------------------------------------------------
# 2. Every size 0..70: roots, proofs, verification and tampering, against the reference.
# ------------------------------------------------------------------------------------------------

InclusionArgs = tuple[bytes, int, int, list[bytes], bytes]  # leaf, index, size, proof, root
ConsistencyArgs = tuple[int, int, bytes, bytes, list[bytes]]  # old, new, old/new root, proof
Inclusion = tuple[str, InclusionArgs]
Consistency = tuple[str, ConsistencyArgs]


def tampered_proofs(
    proof: list[bytes], size: int, extras: Sequence[bytes]
) -> Iterator[tuple[str, list[bytes]]]:
    """Every single-bit flip of each element (see bits_to_flip), each element dropped, an
    element inserted at every position, and the ``extras`` prepended and appended."""
    for j, p in enumerate(proof):
        for bit in bits_to_flip(size, j):
            yield f"proof[{j}] bit {bit} flipped", [*proof[:j], flip(p, bit), *proof[j + 1 :]]
        yield f"proof[{j}] dropped", proof[:j] + proof[j + 1 :]
    for j in range(len(proof) + 1):
        yield f"element inserted at {j}", [*proof[:j], SOME_HASH, *proof[j:]]
    for extra in extras:
        yield f"{extra.hex()[:8]}… prepended", [extra, *proof]
        yield f"{extra.hex()[:8]}… appended", [*proof, extra]


def bad_inclusion_probes(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> Iterator[Inclusion]:
    """Arguments that every verifier must reject, given a valid (leaf, index, size, proof, root)."""
    for desc, bad in tampered_proofs(proof, size, [b"", root, leaf, SOME_HASH]):
        yield desc, (leaf, index, size, bad, root)
    for wrong in {index - 1, index + 1, index ^ 1, index ^ 2, size - 1 - index, -1, size} - {index}:
        yield f"index {wrong}", (leaf, wrong, size, proof, root)
    for wrong in {size * 2, size // 2, size * 2 + 1, 0, -1} - {size}:
        yield f"size {wrong}", (leaf, index, wrong, proof, root)
    for bit in (0, 7, 128, 255):
        yield f"root bit {bit} flipped", (leaf, index, size, proof, flip(root, bit))
        yield f"leaf bit {bit} flipped", (flip(leaf, bit), index, size, proof, root)
    for wrong_root in (merkle.EMPTY_ROOT, SOME_HASH, b"", leaf if proof else SOME_HASH):
        yield f"root {wrong_root.hex()[:8]}…", (leaf, index, size, proof, wrong_root)
    yield "leaf data, not its hash", (b"WrongLeaf", index, size, proof, root)


def bad_consistency_probes(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> Iterator[Consistency]:
    """What every verifier must reject, given a valid nontrivial (0 < old < new) proof."""
    extras = [b"", old_root, new_root, proof[0], proof[-1], SOME_HASH]
    for desc, bad in tampered_proofs(proof, new, extras):
        yield desc, (old, new, old_root, new_root, bad)
    yield "empty proof", (old, new, old_root, new_root, [])
    for wrong in {old - 1, old + 1, old ^ 2, -1, new + 1} - {old}:
        yield f"old size {wrong}", (wrong, new, old_root, new_root, proof)
    for wrong in {new * 2, new // 2, old - 1} - {new}:
        yield f"new size {wrong}", (old, wrong, old_root, new_root, proof)
    yield "swapped roots", (old, new, new_root, old_root, proof)
    for bit in (0, 7, 128, 255):
        yield f"old root bit {bit}", (old, new, flip(old_root, bit), new_root, proof)
        yield f"new root bit {bit}", (old, new, old_root, flip(new_root, bit), proof)
    for wrong_root in (b"WrongRoot", merkle.EMPTY_ROOT, SOME_HASH):
        yield f"old root {wrong_root.hex()[:8]}…", (old, new, wrong_root, new_root, proof)
        yield f"new root {wrong_root.hex()[:8]}…", (old, new, old_root, wrong_root, proof)


@pytest.mark.parametrize("size", SIZES)
def test_root(size: int) -> None:
    assert merkle.root(size, REF_NODE) == ref_mth(DATA[:size])


def test_range_hash() -> None:
    """MTH(D[start:end]) for every range whose start is a multiple of its split (the ranges
    roots and proofs are made of); a power-of-two range may then sit at half alignment."""
    checked = 0
    for start in range(max(SIZES)):
        for end in range(start + 1, max(SIZES) + 1):
            n = end - start
            if n == 1 or start % ref_k(n) == 0:
                assert merkle.range_hash(start, end, REF_NODE) == ref_mth(DATA[start:end])
                checked += 1
    assert checked > 400


def test_empty_tree() -> None:
    assert merkle.EMPTY_ROOT == _sha256(b"") == merkle.root(0, no_reads)
    assert merkle.consistency_proof(0, 0, no_reads) == []
    assert merkle.verify_consistency(0, 0, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [])


EVERY_CLAIM_UP_TO = 12  # trees this small: a proof is checked against every (index, size) nearby


def other_inclusion_claims(index: int, size: int) -> set[tuple[int, int]]:
    """(index, size) pairs to check a proof for (index, size) against: for the small trees all
    with size up to twice as large, including out-of-range ones; else nearby sizes."""
    if size <= EVERY_CLAIM_UP_TO:
        return {(i, n) for n in range(2 * size + 3) for i in range(-1, n + 1)}
    return {(index, size + d) for d in range(-3, 4)} | {(index // 2, size // 2)}


def _check_inclusion_other_claims(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> list[str]:
    """A proof checked as the proof of another (index, size) is accepted by the module exactly
    when the reference accepts it. (Some are: PATH only fixes the tree's shape along the path,
    so index 0 of 5 has the same path as of 6, 7 or 8 — the size is authenticated by the signed
    tree head.) This catches, e.g., a verifier that lets a proof run on past the root."""
    failures = []
    for i, n in other_inclusion_claims(index, size):
        want = ref_verify_inclusion(leaf, i, n, proof, root)
        if merkle.verify_inclusion(leaf, i, n, proof, root) != want:
            failures.append(f"index {index} of {size}, checked as {i} of {n}: want {want}")
    return failures


@pytest.mark.parametrize("size", SIZES)
def test_inclusion(size: int) -> None:
    d, root = DATA[:size], ref_mth(DATA[:size])
    failures: list[str] = []
    for index in range(size):
        proof, leaf = merkle.inclusion_proof(index, size, REF_NODE), ref_leaf(d[index])
        assert proof == ref_path(index, d), index
        assert merkle.verify_inclusion(leaf, index, size, proof, root), index
        assert ref_verify_inclusion(leaf, index, size, proof, root), index
        for desc, args in bad_inclusion_probes(leaf, index, size, proof, root):
            if merkle.verify_inclusion(*args):
                failures.append(f"index {index}: module accepts {desc}")
            if ref_verify_inclusion(*args):
                failures.append(f"index {index}: reference accepts {desc}")
        failures += _check_inclusion_other_claims(leaf, index, size, proof, root)
    assert not failures, failures[:20]


def other_consistency_claims(old: int, new: int) -> set[tuple[int, int]]:
    """(old, new) pairs to check a proof for (old, new) against, as other_inclusion_claims."""
    if new <= EVERY_CLAIM_UP_TO:
        return {(o, n) for n in range(2 * new + 3) for o in range(-1, n + 2)}
    nearby = {(old + d, new) for d in range(-2, 3)} | {(old, new + d) for d in range(-2, 3)}
    return nearby | {(old + 1, new + 1), (old - 1, new - 1), (old // 2, new // 2)}


def _check_consistency_other_claims(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> list[str]:
    """The module accepts a proof for other (old, new) sizes exactly when the reference does."""
    failures = []
    for o, n in other_consistency_claims(old, new):
        want = ref_verify_consistency(o, n, old_root, new_root, proof)
        if merkle.verify_consistency(o, n, old_root, new_root, proof) != want:
            failures.append(f"{old}->{new} checked as {o}->{n}: want {want}")
    return failures


@pytest.mark.parametrize("new", SIZES)
def test_consistency(new: int) -> None:
    new_root = ref_mth(DATA[:new])
    failures: list[str] = []
    for old in range(new + 1):
        old_root = ref_mth(DATA[:old])
        proof = merkle.consistency_proof(old, new, REF_NODE)
        assert proof == ref_proof(old, DATA[:new]), old
        assert merkle.verify_consistency(old, new, old_root, new_root, proof), old
        assert ref_verify_consistency(old, new, old_root, new_root, proof), old
        if old in (0, new):
            assert proof == []
            assert not merkle.verify_consistency(old, new, old_root, new_root, [new_root])
            assert not merkle.verify_consistency(old, new, SOME_HASH, new_root, [])
            failures += _check_consistency_other_claims(old, new, old_root, new_root, proof)
            continue
        for desc, args in bad_consistency_probes(old, new, old_root, new_root, proof):
            if merkle.verify_consistency(*args):
                failures.append(f"old {old}: module accepts {desc}")
            if ref_verify_consistency(*args):
                failures.append(f"old {old}: reference accepts {desc}")
        failures += _check_consistency_other_claims(old, new, old_root, new_root, proof)
    assert not failures, failures[:20]


def test_same_path_for_different_sizes_is_inherent() -> None:
    """The one way a wrong size can pass (documented, not a bug): index 0 of 5..8 leaves has a
    path of three left turns, so a proof for size 5 also verifies, against the same root, as
    size 6 — in the reference verifier as in the module."""
    proof, root, leaf = ref_path(0, DATA[:5]), ref_mth(DATA[:5]), ref_leaf(DATA[0])
    assert ref_verify_inclusion(leaf, 0, 6, proof, root)
    assert merkle.verify_inclusion(leaf, 0, 6, proof, root)
    assert not merkle.verify_inclusion(leaf, 0, 9, proof, root)


# Edge cases.


@pytest.mark.parametrize(("index", "size"), [(0, 0), (-1, 5), (5, 5), (6, 5), (1, 0), (-1, 0)])
def test_inclusion_proof_out_of_range(index: int, size: int) -> None:
    with pytest.raises(ValueError, match="not in a tree"):
        merkle.inclusion_proof(index, size, REF_NODE)


@pytest.mark.parametrize(("old", "new"), [(1, 0), (6, 5), (71, 70), (-1, 3), (-1, -1)])
def test_consistency_proof_out_of_range(old: int, new: int) -> None:
    with pytest.raises(ValueError, match="no consistency proof"):
        merkle.consistency_proof(old, new, REF_NODE)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (-1, 5), (5, 5), (9, 5), (0, -1)])
def test_verify_inclusion_out_of_range(index: int, size: int) -> None:
    leaf = ref_leaf(DATA[0])
    assert not merkle.verify_inclusion(leaf, index, size, [], leaf)
    assert not merkle.verify_inclusion(leaf, index, size, [SOME_HASH], merkle.EMPTY_ROOT)


def test_verify_inclusion_single_leaf() -> None:
    leaf = ref_leaf(b"data")
    assert merkle.verify_inclusion(leaf, 0, 1, [], leaf)
    assert not merkle.verify_inclusion(leaf, 0, 1, [], b"")
    assert not merkle.verify_inclusion(b"", 0, 1, [], leaf)
    assert not merkle.verify_inclusion(leaf, 0, 1, [leaf], leaf)


@pytest.mark.parametrize(("old", "new"), [(1, 0), (2, 1), (6, 5), (-1, 3), (-1, -1), (3, -1)])
def test_verify_consistency_out_of_range(old: int, new: int) -> None:
    for proof in ([], [SOME_HASH]):
        for first, second in ((merkle.EMPTY_ROOT, merkle.EMPTY_ROOT), (SOME_HASH, SOME_HASH)):
            assert not merkle.verify_consistency(old, new, first, second, proof)


def test_verify_consistency_trivial() -> None:
    """Published edge cases (transparency-dev/merkle TestVerifyConsistency), the module being
    stricter in one: from the empty tree, the old head must be the empty tree's."""
    r1, r2, e = ref_leaf(b"1"), ref_leaf(b"2"), merkle.EMPTY_ROOT
    assert merkle.verify_consistency(0, 0, e, e, [])
    assert merkle.verify_consistency(1, 1, r1, r1, [])
    assert merkle.verify_consistency(0, 5, e, r2, [])
    assert not merkle.verify_consistency(0, 5, r1, r2, [])  # Go accepts any old head here
    assert not merkle.verify_consistency(1, 1, r1, r2, [])
    assert not merkle.verify_consistency(0, 0, e, r2, [])
    assert not merkle.verify_consistency(1, 2, r1, r2, [])
    for old, new in ((0, 0), (0, 1), (1, 1)):
        assert not merkle.verify_consistency(old, new, e, e, [e])


# ------------------------------------------------------------------------------------------------
# 3. appended(): incremental growth over a dict store, reading only the frontier.
# ------------------------------------------------------------------------------------------------


class CountingStore:
    """A dict node store that records every read."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.reads: list[tuple[int, int]] = []

    def node(self, level: int, index: int) -> bytes:
        self.reads.append((level, index))
        return self.nodes[(level, index)]


def new_perfect_subtrees(old: int, new: int) -> set[tuple[int, int]]:
    """The perfect subtrees of the tree of ``new`` leaves that hold a leaf past ``old``."""
    return {
        (lv, i) for lv in range(new.bit_length()) for i in range(new >> lv) if (i + 1) << lv > old
    }


def grow(batches: Sequence[int], data: Sequence[bytes]) -> CountingStore:
    """Append ``data`` in batches of those sizes, checking each batch as it goes."""
    store, size = CountingStore(), 0
    for count in batches:
        store.reads.clear()
        batch = [ref_leaf(x) for x in data[size : size + count]]
        new = merkle.appended(size, batch, store.node)
        assert set(new) == new_perfect_subtrees(size, size + count), (size, count)
        assert len(store.reads) <= size.bit_length(), (size, count, store.reads)
        assert set(store.reads) <= ref_frontier(size), (size, count, store.reads)
        assert not set(new) & set(store.nodes), "a node written twice"
        store.nodes.update(new)
        size += count
        assert merkle.root(size, store_reader(store.nodes)) == ref_mth(data[:size]), size
    return store


def test_appended_at_once() -> None:
    for size in (0, 1, 2, 3, 7, 8, 70, 96):
        nodes = merkle.appended(0, [ref_leaf(x) for x in DATA[:size]], no_reads)
        assert nodes == ref_perfect_nodes(DATA[:size]), size
    assert merkle.appended(0, [], no_reads) == {}
    assert merkle.appended(37, [], no_reads) == {}


def test_appended_one_at_a_time() -> None:
    store = grow([1] * len(DATA), DATA)
    assert store.nodes == REF_STORE


@pytest.mark.parametrize("seed", range(8))
def test_appended_in_random_batches(seed: int) -> None:
    rng = random.Random(seed)
    batches, total = [], 0
    while total < 200:
        count = rng.choice([0, 1, 1, 2, 3, rng.randint(1, 40)])
        batches.append(count)
        total += count
    data = data_for(total, salt=bytes([seed]))
    store = grow(batches, data)
    assert store.nodes == merkle.appended(0, [ref_leaf(x) for x in data], no_reads)
    assert store.nodes == ref_perfect_nodes(data)


def test_appended_on_top_of_a_reference_store() -> None:
    """Growing a store made elsewhere (the reference's) reads just its frontier, too."""
    for size in range(len(DATA)):
        store = CountingStore()
        store.nodes = ref_perfect_nodes(DATA[:size])
        new = merkle.appended(size, [ref_leaf(x) for x in DATA[size:]], store.node)
        assert set(store.reads) <= ref_frontier(size)
        assert len(store.reads) <= size.bit_length()
        store.nodes.update(new)
        assert store.nodes == REF_STORE, size


# ------------------------------------------------------------------------------------------------
# 4. CompactRange.
# ------------------------------------------------------------------------------------------------


def test_compact_range_every_prefix() -> None:
    data = data_for(300, salt=b"compact")
    compact = merkle.CompactRange()
    assert compact.size == 0
    assert compact.root() == _sha256(b"")
    for size, x in enumerate(data, start=1):
        compact.append(ref_leaf(x))
        assert compact.size == size
        assert compact.root() == ref_mth(data[:size]), size
        assert compact.root() == ref_mth(data[:size]), size  # root() leaves it unchanged


# ------------------------------------------------------------------------------------------------
# 5. Property: random sizes up to 300, random index and old size.
# ------------------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    salt=st.binary(max_size=6),
    size=st.integers(min_value=1, max_value=300),
    data=st.data(),
)
def test_random_trees(salt: bytes, size: int, data: st.DataObject) -> None:
    d = data_for(size, salt)
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    old = data.draw(st.integers(min_value=0, max_value=size), label="old")
    split = data.draw(st.integers(min_value=0, max_value=size), label="batch split")
    nodes = merkle.appended(0, [ref_leaf(x) for x in d[:split]], no_reads)
    nodes |= merkle.appended(split, [ref_leaf(x) for x in d[split:]], store_reader(nodes))
    node = store_reader(nodes)
    root, old_root = ref_mth(d), ref_mth(d[:old])
    assert merkle.root(size, node) == root
    assert merkle.root(old, node) == old_root

    path = merkle.inclusion_proof(index, size, node)
    assert path == ref_path(index, d)
    leaf = ref_leaf(d[index])
    assert merkle.verify_inclusion(leaf, index, size, path, root)
    if path:
        j = data.draw(st.integers(min_value=0, max_value=len(path) - 1), label="element")
        bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
        bad = [*path[:j], flip(path[j], bit), *path[j + 1 :]]
        assert not merkle.verify_inclusion(leaf, index, size, bad, root)
        assert not ref_verify_inclusion(leaf, index, size, bad, root)

    proof = merkle.consistency_proof(old, size, node)
    assert proof == ref_proof(old, d)
    assert merkle.verify_consistency(old, size, old_root, root, proof)
    if proof:
        j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="element")
        bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
        bad = [*proof[:j], flip(proof[j], bit), *proof[j + 1 :]]
        assert not merkle.verify_consistency(old, size, old_root, root, bad)
        assert not ref_verify_consistency(old, size, old_root, root, bad)
