"""The golden vectors of CONTRACT section 9 (the tamper-evident log), hard-coded, and the checks
a client makes with ``contracts.transparency`` alone: a checkpoint's signature, a leaf's
inclusion in a signed tree, one signed tree's consistency with a later one.

The tree math itself (RFC 9162 against an independent reference) is ``test_merkle``'s; here the
published values are pinned, so that a change of any hash, encoding or field is a failure.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from pydantic import BaseModel, ValidationError

from contracts import merkle
from contracts.api import (
    MAX_LEAVES,
    CheckpointReply,
    ConsistencyProof,
    GetRequest,
    LeafRange,
    LogCheckpointRequest,
    LogConsistencyRequest,
    LogLeavesRequest,
    VerifyReport,
)
from contracts.canonical import canonical, parse_json, sha256_json
from contracts.subjects import Subjects
from contracts.transparency import (
    ADOPTED,
    CHECKPOINT_SCHEMA,
    LEAF_SCHEMA,
    Checkpoint,
    LeafRecord,
    consistency_valid,
    hexes,
    inclusion_valid,
    key_id,
    leaf_hash,
    leaf_record,
    record_bytes,
    sign_checkpoint,
    signature_valid,
)
from worker.checkpoints import EXPECTED_LAST_SEQ
from worker.commands import proof_checks
from worker.core import log_checks
from worker.core.log_checks import run_checks
from worker.store.jetstream import EXPECTED_LAST_SUBJECT_SEQ
from worker.store.revisions import created_entry

# -- the vectors, copied from CONTRACT section 9 ----------------------------------------------

EMPTY_HEAD = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
RFC6962_LEAVES = [b"", b"\x00", b"\x10"]
HEADS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
}
INCLUSION_1_IN_3 = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
]
CONSISTENCY_1_TO_3 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
]
CONSISTENCY_2_TO_3 = ["0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"]

ARTIFACT: dict[str, Any] = {
    "run_id": "run_467d95e1bee1f48fc5dfa0a6a422cd7d",
    "revision": 1,
    "source": "engine-a",
    "event_id": "evt-0001",
    "recorded_at_utc": "2026-12-01T10:00:00.000000+00:00",
    "content_sha256": "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777",
    "status": "OK",
}
LEAF_BYTES = (
    b'{"artifact_sha256":"5b1152f56c6d9cfd8af6d5d9a78b0b5149bc627099674547c4e3749b5c9573e5",'
    b'"at":"2026-12-01T10:00:00.000000+00:00","change":"created",'
    b'"content_sha256":"43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777",'
    b'"entry_sha256":"8a67788060f536009e61acf4b6f2270550159c7eb7cb00974030597a28e69b94",'
    b'"revision":1,"run_id":"run_467d95e1bee1f48fc5dfa0a6a422cd7d","schema":"rmos.log_leaf.v1"}'
)
LEAF_HASH = "77f6fcf7e7313bebcf988ccca727612d2f04878e5c5167a5a618ef701303116f"

SEED = bytes(range(32))  # 00 01 02 … 1f
PUBLIC_B64 = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
KEY_ID = "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c"
ISSUED_AT = "2026-12-01T10:00:02.000000+00:00"
SIGNED_BYTES = (
    b'{"issued_at":"2026-12-01T10:00:02.000000+00:00",'
    b'"key_id":"56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c",'
    b'"origin":"rmos.runs",'
    b'"root_hash":"aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",'
    b'"schema":"rmos.log_checkpoint.v1","tree_size":3}'
)
SIGNATURE = (
    "iZRP/n/eNLOW8sBnFyyaRokVsxw4TbTB4taQWbzzX5oxvEPRGmKaZq389lrzzJHa4a7hjx2s3PCrHVqKL8gVDw=="
)

# -- helpers ----------------------------------------------------------------------------------


def seed_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEED)


def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def tree_of(data: list[bytes]) -> merkle.NodeAt:
    """The subtree hashes of a tree of these leaf data, grown as the log grows it."""
    nodes: dict[tuple[int, int], bytes] = {}
    for index, item in enumerate(data):
        nodes.update(merkle.appended(index, [merkle.leaf_hash(item)], lambda lv, i: nodes[(lv, i)]))
    return lambda level, index: nodes[(level, index)]


RFC_TREE = tree_of(RFC6962_LEAVES)


def vector_checkpoint() -> Checkpoint:
    """The vector's checkpoint as a client receives it: parsed from the wire's fields."""
    return Checkpoint.model_validate(
        {
            "schema": CHECKPOINT_SCHEMA,
            "origin": "rmos.runs",
            "tree_size": 3,
            "root_hash": HEADS[3],
            "issued_at": ISSUED_AT,
            "key_id": KEY_ID,
            "signature": SIGNATURE,
        }
    )


def signed_head(size: int, root: str) -> Checkpoint:
    return sign_checkpoint(
        seed_key(),
        origin="rmos.runs",
        tree_size=size,
        root=bytes.fromhex(root),
        issued_at=ISSUED_AT,
    )


def flip(hex_hash: str) -> str:
    """The hash with its last hex digit changed."""
    return hex_hash[:-1] + ("0" if hex_hash[-1] != "0" else "1")


# -- the tree ---------------------------------------------------------------------------------


class TestTreeVectors:
    """Heads and proofs of RFC 6962's test leaves, as CONTRACT section 9 publishes them."""

    def test_empty_head(self) -> None:
        """The head of the empty tree is SHA-256 of nothing."""
        assert merkle.EMPTY_ROOT.hex() == EMPTY_HEAD
        assert merkle.root(0, RFC_TREE).hex() == EMPTY_HEAD
        assert merkle.CompactRange().root().hex() == EMPTY_HEAD

    @pytest.mark.parametrize("size", [1, 2, 3])
    def test_heads(self, size: int) -> None:
        """The heads of the trees of the first 1, 2 and 3 leaves, from stored nodes and from a
        compact range alike."""
        assert merkle.root(size, RFC_TREE).hex() == HEADS[size]
        compact = merkle.CompactRange()
        for item in RFC6962_LEAVES[:size]:
            compact.append(merkle.leaf_hash(item))
        assert compact.root().hex() == HEADS[size]

    def test_inclusion_proof(self) -> None:
        """PATH(1, D[3]), nearest the leaf first; it verifies against the head of 3."""
        proof = merkle.inclusion_proof(1, 3, RFC_TREE)
        assert hexes(proof) == INCLUSION_1_IN_3
        leaf = merkle.leaf_hash(RFC6962_LEAVES[1])
        assert merkle.verify_inclusion(leaf, 1, 3, proof, bytes.fromhex(HEADS[3]))

    @pytest.mark.parametrize(
        ("old", "expected"), [(1, CONSISTENCY_1_TO_3), (2, CONSISTENCY_2_TO_3)]
    )
    def test_consistency_proofs(self, old: int, expected: list[str]) -> None:
        """PROOF(1, D[3]) and PROOF(2, D[3]); each verifies between the published heads."""
        proof = merkle.consistency_proof(old, 3, RFC_TREE)
        assert hexes(proof) == expected
        old_root, new_root = bytes.fromhex(HEADS[old]), bytes.fromhex(HEADS[3])
        assert merkle.verify_consistency(old, 3, old_root, new_root, proof)


# -- the leaf ---------------------------------------------------------------------------------


class TestLeafVector:
    """The leaf of revision 1 of the vector's artifact."""

    def test_leaf_bytes_and_hash(self) -> None:
        """leaf_record(artifact, created entry) in canonical JSON is the vector's bytes, and its
        hash SHA-256(0x00 || bytes)."""
        record = leaf_record(ARTIFACT, created_entry(ARTIFACT))
        assert canonical(record) == LEAF_BYTES
        assert leaf_hash(record).hex() == LEAF_HASH
        assert hashlib.sha256(b"\x00" + LEAF_BYTES).hexdigest() == LEAF_HASH

    @pytest.mark.parametrize(
        "changes",
        [
            {},
            {"change": "änderung"},  # non-ASCII: RFC 8785 writes UTF-8, never \u escapes
            {"change": "advisory 🛠"},  # outside the BMP
            {"at": "2026-12-01T10:00:00\u2028"},
            {"change": "tab\there\x01"},
            {"change": "delete\x7f"},  # ASCII, but json.dumps escapes DEL and JCS does not
            {"revision": 2**53 - 1},
        ],
    )
    def test_leaf_hash_is_of_canonical_bytes(self, changes: dict[str, Any]) -> None:
        """Whatever a record holds, its leaf hash is SHA-256(0x00 || canonical JSON): what any
        client recomputes from the record with CONTRACT section 1 alone."""
        record = {**leaf_record(ARTIFACT, created_entry(ARTIFACT)), **changes}
        assert leaf_hash(record) == hashlib.sha256(b"\x00" + canonical(record)).digest()

    def test_leaf_fields(self) -> None:
        """Its hashes are of the artifact and of the created entry, its change and time the
        entry's."""
        entry = created_entry(ARTIFACT)
        assert entry == {
            "revision": 1,
            "at": "2026-12-01T10:00:00.000000+00:00",
            "change": "created",
            "by": "event engine-a:evt-0001",
            "changed": [],
        }
        record = leaf_record(ARTIFACT, entry)
        assert record["artifact_sha256"] == sha256_json(ARTIFACT)
        assert record["entry_sha256"] == sha256_json(entry)
        assert record["schema"] == LEAF_SCHEMA
        assert (record["change"], record["at"]) == ("created", entry["at"])

    def test_leaf_record_model(self) -> None:
        """The log's record model takes the vector's leaf and refuses an extra field or a
        revision 0."""
        record = leaf_record(ARTIFACT, created_entry(ARTIFACT))
        parsed = LeafRecord.model_validate(record)
        assert parsed.model_dump(by_alias=True) == record
        with pytest.raises(ValidationError):
            LeafRecord.model_validate({**record, "extra": 1})
        with pytest.raises(ValidationError):
            LeafRecord.model_validate({**record, "revision": 0})
        with pytest.raises(ValidationError):
            LeafRecord.model_validate({**record, "artifact_sha256": "A" * 64})

    def test_any_artifact_change_changes_the_leaf(self) -> None:
        """No field of the artifact is outside the leaf's hash."""
        for key in ARTIFACT:
            changed = {**ARTIFACT, key: "x" if key != "revision" else 1.5}
            if key in ("source", "event_id", "recorded_at_utc"):  # these also make the entry
                record = leaf_record(changed, created_entry(changed))
            else:
                record = leaf_record(changed, created_entry(ARTIFACT))
            assert leaf_hash(record).hex() != LEAF_HASH, key


# -- the checkpoint ---------------------------------------------------------------------------


class TestCheckpointVector:
    """The checkpoint of the 3-leaf tree, signed by the key of seed 00..1f."""

    def test_key(self) -> None:
        """Its public key (raw, base64) and key id (SHA-256 of the 32 raw bytes)."""
        public = seed_key().public_key()
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert base64.b64encode(raw).decode() == PUBLIC_B64
        assert key_id(public) == KEY_ID
        assert hashlib.sha256(base64.b64decode(PUBLIC_B64)).hexdigest() == KEY_ID

    def test_signing(self) -> None:
        """sign_checkpoint gives the vector's signed bytes and (Ed25519 being deterministic)
        its signature."""
        checkpoint = signed_head(3, HEADS[3])
        assert checkpoint.signed_bytes() == SIGNED_BYTES
        assert checkpoint.signature == SIGNATURE
        assert checkpoint.key_id == KEY_ID
        assert checkpoint.as_dict() == vector_checkpoint().as_dict()
        assert checkpoint.as_dict()["schema"] == CHECKPOINT_SCHEMA

    def test_vector_verifies_with_the_published_key(self) -> None:
        """A client that holds only the base64 public key checks the vector's checkpoint."""
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(PUBLIC_B64))
        checkpoint = vector_checkpoint()
        assert checkpoint.signed_bytes() == SIGNED_BYTES
        assert signature_valid(checkpoint, public)
        public.verify(base64.b64decode(SIGNATURE), SIGNED_BYTES)  # raises if it does not

    def test_as_dict_without_signature(self) -> None:
        body = vector_checkpoint().as_dict(signature=False)
        assert "signature" not in body
        assert canonical(body) == SIGNED_BYTES
        assert vector_checkpoint().root == bytes.fromhex(HEADS[3])


class TestSignatureValid:
    """signature_valid is true for exactly the signed checkpoint and its key."""

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("origin", "rmos.other"),
            ("tree_size", 2),
            ("tree_size", 4),
            ("root_hash", HEADS[2]),
            ("root_hash", flip(HEADS[3])),
            ("issued_at", "2026-12-01T10:00:03.000000+00:00"),
            ("key_id", flip(KEY_ID)),
        ],
    )
    def test_changed_field(self, field: str, value: Any) -> None:
        """Any field changed after signing breaks the signature."""
        public = seed_key().public_key()
        changed = vector_checkpoint().model_copy(update={field: value})
        assert not signature_valid(changed, public)
        assert signature_valid(vector_checkpoint(), public)

    def test_every_field_is_covered(self) -> None:
        """Every field but the signature is in the signed bytes (the test above misses none)."""
        signed = set(vector_checkpoint().as_dict(signature=False))
        assert signed == {"schema", "origin", "tree_size", "root_hash", "issued_at", "key_id"}

    def test_another_key(self) -> None:
        """A checkpoint is not valid under another key, nor one that key signed under ours."""
        other = other_key()
        assert not signature_valid(vector_checkpoint(), other.public_key())
        forged = sign_checkpoint(
            other,
            origin="rmos.runs",
            tree_size=3,
            root=bytes.fromhex(HEADS[3]),
            issued_at=ISSUED_AT,
        )
        assert signature_valid(forged, other.public_key())
        assert not signature_valid(forged, seed_key().public_key())
        # Claiming our key id does not help: the signature is still the other key's.
        claimed = forged.model_copy(update={"key_id": KEY_ID})
        assert not signature_valid(claimed, seed_key().public_key())

    @pytest.mark.parametrize(
        "signature",
        [
            "not base64!",
            SIGNATURE[:-4],  # a truncated encoding
            SIGNATURE.rstrip("="),  # missing padding
            base64.b64encode(base64.b64decode(SIGNATURE)[:63]).decode(),  # 63 bytes
            base64.b64encode(b"\x00" * 64).decode(),
            base64.b64encode(bytes(reversed(base64.b64decode(SIGNATURE)))).decode(),
            " " + SIGNATURE,
        ],
    )
    def test_bad_signature(self, signature: str) -> None:
        """A signature that is not base64, or not the right 64 bytes, is simply invalid."""
        bad = vector_checkpoint().model_copy(update={"signature": signature})
        assert not signature_valid(bad, seed_key().public_key())


class TestProofsAgainstCheckpoints:
    """inclusion_valid and consistency_valid, as a client runs them on wire (hex) proofs."""

    # The vector's inclusion proof of leaf 1 in a tree of 3 names leaves 0 and 2 only, so it
    # puts any record at position 1 of the tree [leaf 0, record, leaf 2].
    RECORD = leaf_record(ARTIFACT, created_entry(ARTIFACT))

    def record_tree(self) -> Checkpoint:
        tree = tree_of([RFC6962_LEAVES[0], canonical(self.RECORD), RFC6962_LEAVES[2]])
        assert hexes(merkle.inclusion_proof(1, 3, tree)) == INCLUSION_1_IN_3
        return signed_head(3, merkle.root(3, tree).hex())

    def test_inclusion_accepts_the_vector_proof(self) -> None:
        assert inclusion_valid(self.RECORD, 1, INCLUSION_1_IN_3, self.record_tree())

    @pytest.mark.parametrize(
        "proof",
        [
            [],
            INCLUSION_1_IN_3[:1],
            INCLUSION_1_IN_3[::-1],
            [flip(INCLUSION_1_IN_3[0]), INCLUSION_1_IN_3[1]],
            [INCLUSION_1_IN_3[0], flip(INCLUSION_1_IN_3[1])],
            [*INCLUSION_1_IN_3, INCLUSION_1_IN_3[1]],
            ["zz" * 32, INCLUSION_1_IN_3[1]],
            [INCLUSION_1_IN_3[0], "0298"],
        ],
    )
    def test_inclusion_rejects_altered_proofs(self, proof: list[str]) -> None:
        assert not inclusion_valid(self.RECORD, 1, proof, self.record_tree())

    def test_inclusion_rejects_another_leaf_index_or_tree(self) -> None:
        """The proof holds for this record, at this position, in this tree only."""
        checkpoint = self.record_tree()
        assert not inclusion_valid({**self.RECORD, "revision": 2}, 1, INCLUSION_1_IN_3, checkpoint)
        for index in (0, 2, 3, -1):
            assert not inclusion_valid(self.RECORD, index, INCLUSION_1_IN_3, checkpoint)
        assert not inclusion_valid(self.RECORD, 1, INCLUSION_1_IN_3, vector_checkpoint())
        for size in (0, 1, 2, 5, 8):  # a proof of 2 siblings fits no tree of these sizes
            other_size = checkpoint.model_copy(update={"tree_size": size})
            assert not inclusion_valid(self.RECORD, 1, INCLUSION_1_IN_3, other_size)

    @pytest.mark.parametrize(("old", "proof"), [(1, CONSISTENCY_1_TO_3), (2, CONSISTENCY_2_TO_3)])
    def test_consistency_accepts_the_vector_proofs(self, old: int, proof: list[str]) -> None:
        assert consistency_valid(signed_head(old, HEADS[old]), signed_head(3, HEADS[3]), proof)

    @pytest.mark.parametrize(
        ("old", "proof"),
        [
            (1, []),
            (1, CONSISTENCY_1_TO_3[:1]),
            (1, CONSISTENCY_1_TO_3[::-1]),
            (1, [flip(CONSISTENCY_1_TO_3[0]), CONSISTENCY_1_TO_3[1]]),
            (1, [CONSISTENCY_1_TO_3[0], flip(CONSISTENCY_1_TO_3[1])]),
            (1, [*CONSISTENCY_1_TO_3, CONSISTENCY_2_TO_3[0]]),
            (1, CONSISTENCY_2_TO_3),
            (2, CONSISTENCY_1_TO_3),
            (2, [flip(CONSISTENCY_2_TO_3[0])]),
            (2, ["not hex"]),
        ],
    )
    def test_consistency_rejects_altered_proofs(self, old: int, proof: list[str]) -> None:
        assert not consistency_valid(signed_head(old, HEADS[old]), signed_head(3, HEADS[3]), proof)

    def test_consistency_rejects_altered_heads(self) -> None:
        """The vector proofs do not link a head that is not the tree's, nor the trees reversed."""
        new = signed_head(3, HEADS[3])
        assert not consistency_valid(signed_head(1, HEADS[2]), new, CONSISTENCY_1_TO_3)
        assert not consistency_valid(signed_head(2, flip(HEADS[2])), new, CONSISTENCY_2_TO_3)
        assert not consistency_valid(
            signed_head(2, HEADS[2]), signed_head(3, flip(HEADS[3])), CONSISTENCY_2_TO_3
        )
        assert not consistency_valid(new, signed_head(2, HEADS[2]), CONSISTENCY_2_TO_3)

    def test_consistency_trivial_cases(self) -> None:
        """From the empty tree, and from a tree to itself: an empty proof, and only that."""
        empty = signed_head(0, EMPTY_HEAD)
        three = signed_head(3, HEADS[3])
        assert consistency_valid(empty, three, [])
        assert consistency_valid(three, three, [])
        assert not consistency_valid(three, three, CONSISTENCY_2_TO_3)
        assert not consistency_valid(signed_head(0, HEADS[1]), three, [])


class TestCliProofChecks:
    """``rmos-runs verify --public-key``'s own checks (9.6 steps 2 and 3) of a verify reply."""

    RECORD = TestProofsAgainstCheckpoints.RECORD
    RUN_ID = RECORD["run_id"]

    def report(self, **log: Any) -> VerifyReport:
        checkpoint = TestProofsAgainstCheckpoints().record_tree()
        proof = {
            "leaf_index": 1,
            "leaf": self.RECORD,
            "leaf_hash": leaf_hash(self.RECORD).hex(),
            "tree_size": 3,
            "inclusion_proof": INCLUSION_1_IN_3,
            "checkpoint": checkpoint.as_dict(),
            **log,
        }
        return VerifyReport(run_id=self.RUN_ID, valid=True, checks=[], log=proof)

    def checks(self, report: VerifyReport, key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        public = (key or seed_key()).public_key()
        return {c.name: (c.ok, c.actual) for c in proof_checks(report, public, self.RUN_ID)}

    def test_a_true_proof_passes(self) -> None:
        assert self.checks(self.report()) == {
            "proof.signature": (True, KEY_ID),
            "proof.inclusion": (True, "leaf 1"),
        }

    def test_another_key(self) -> None:
        assert self.checks(self.report(), other_key())["proof.signature"][0] is False

    @pytest.mark.parametrize(
        ("log", "says"),
        [
            ({"leaf_hash": "ab" * 32}, "a leaf_hash that is not the leaf's"),
            ({"tree_size": 4}, "tree_size 4"),
            ({"leaf_index": 0}, "no path to the root"),
            ({"inclusion_proof": INCLUSION_1_IN_3[:1]}, "no path to the root"),
            ({"leaf": {**RECORD, "revision": 2}}, "a leaf_hash that is not the leaf's"),
        ],
    )
    def test_a_reply_that_does_not_hold_together(self, log: dict[str, Any], says: str) -> None:
        assert self.checks(self.report(**log))["proof.inclusion"] == (False, says)

    def test_the_proof_of_another_run(self) -> None:
        """A worker answering with a true proof of some other run's leaf is caught."""
        report = self.report()
        checks = proof_checks(report, seed_key().public_key(), "run_" + "0" * 32)
        assert [(c.name, c.ok) for c in checks][1] == ("proof.inclusion", False)
        assert checks[1].actual == f"a leaf of {self.RUN_ID}"

    def test_no_leaf(self) -> None:
        report = VerifyReport(run_id=self.RUN_ID, valid=False, checks=[], log=None)
        assert self.checks(report) == {"proof.inclusion": (False, "none")}


class TestCheckpointModel:
    """What the Checkpoint model refuses on the wire."""

    def body(self, **changes: Any) -> dict[str, Any]:
        return {**vector_checkpoint().as_dict(), **changes}

    def test_round_trip(self) -> None:
        assert Checkpoint.model_validate(self.body()) == vector_checkpoint()

    def test_extra_field(self) -> None:
        with pytest.raises(ValidationError, match="extra"):
            Checkpoint.model_validate(self.body(note="hello"))

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("root_hash", HEADS[3].upper()),
            ("root_hash", HEADS[3][:-1]),
            ("root_hash", HEADS[3] + "0"),
            ("root_hash", "g" * 64),
            ("root_hash", ""),
            ("key_id", KEY_ID.upper()),
            ("key_id", KEY_ID[:32]),
            ("key_id", PUBLIC_B64),
        ],
    )
    def test_bad_hashes(self, field: str, value: str) -> None:
        with pytest.raises(ValidationError, match=field):
            Checkpoint.model_validate(self.body(**{field: value}))

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("schema", "rmos.log_checkpoint.v2"),
            ("tree_size", -1),
            ("tree_size", "3"),  # strict: no coercion
            ("tree_size", 3.0),
            ("origin", ""),
            ("signature", ""),
            ("signature", "A" * 129),
        ],
    )
    def test_bad_fields(self, field: str, value: Any) -> None:
        with pytest.raises(ValidationError):
            Checkpoint.model_validate(self.body(**{field: value}))

    @pytest.mark.parametrize("field", ["origin", "tree_size", "root_hash", "issued_at", "key_id"])
    def test_missing_field(self, field: str) -> None:
        body = self.body()
        del body[field]
        with pytest.raises(ValidationError):
            Checkpoint.model_validate(body)

    def test_frozen(self) -> None:
        with pytest.raises(ValidationError):
            vector_checkpoint().tree_size = 4  # type: ignore[misc]


# -- the document: contracts/TRANSPARENCY.md ------------------------------------------------

DOCUMENT = Path(__file__).resolve().parents[2] / "contracts" / "TRANSPARENCY.md"
_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
_FOUND = re.compile(r'self\._found\(\s*"([^"]+)"')
_TABLE_KIND = re.compile(r"^\| `([^`]+)` \|", re.MULTILINE)

# The document's example log: RFC 6962's leaves 0 and 2 around the vector's leaf record.
EXAMPLE_RECORD = leaf_record(ARTIFACT, created_entry(ARTIFACT))
EXAMPLE_TREE = tree_of([RFC6962_LEAVES[0], canonical(EXAMPLE_RECORD), RFC6962_LEAVES[2]])


@functools.cache
def document() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


def document_blocks(text: str) -> dict[str, str]:
    """Every ```json block of the document, by the heading nearest above it."""
    blocks: dict[str, str] = {}
    for match in _JSON_BLOCK.finditer(text):
        headings = _HEADING.findall(text, 0, match.start())
        name = headings[-1] if headings else "(no heading)"
        assert name not in blocks, f"two json blocks under the heading {name!r}"
        blocks[name] = match.group(1).rstrip("\n")
    return blocks


def _consistency(first: int, second: int, tree: merkle.NodeAt) -> dict[str, Any]:
    return {
        "first": first,
        "second": second,
        "first_root": merkle.root(first, tree).hex(),
        "second_root": merkle.root(second, tree).hex(),
        "proof": hexes(merkle.consistency_proof(first, second, tree)),
    }


def expected_blocks() -> dict[str, Any]:
    """Each block's value as the code computes it from the vectors' inputs alone."""
    record, entry = EXAMPLE_RECORD, created_entry(ARTIFACT)
    public = seed_key().public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    rfc_checkpoint = signed_head(3, merkle.root(3, RFC_TREE).hex())
    example = signed_head(3, merkle.root(3, EXAMPLE_TREE).hex())
    checks = [check.as_dict() for check in run_checks(ARTIFACT, [entry], [record])]
    record_hash = leaf_hash(record).hex()
    return {
        "Vector: empty-tree": {"tree_size": 0, "root_hash": merkle.root(0, RFC_TREE).hex()},
        "Vector: rfc6962-tree": {
            "leaves_hex": [data.hex() for data in RFC6962_LEAVES],
            "leaf_hashes": [merkle.leaf_hash(data).hex() for data in RFC6962_LEAVES],
            "heads": [
                {"tree_size": size, "root_hash": merkle.root(size, RFC_TREE).hex()}
                for size in (1, 2, 3)
            ],
        },
        "Vector: rfc6962-inclusion": {
            "leaf_index": 1,
            "tree_size": 3,
            "leaf_hash": merkle.leaf_hash(RFC6962_LEAVES[1]).hex(),
            "root_hash": merkle.root(3, RFC_TREE).hex(),
            "inclusion_proof": hexes(merkle.inclusion_proof(1, 3, RFC_TREE)),
        },
        "Vector: rfc6962-consistency-1-3": _consistency(1, 3, RFC_TREE),
        "Vector: rfc6962-consistency-2-3": _consistency(2, 3, RFC_TREE),
        "Vector: leaf-record": {
            "artifact": ARTIFACT,
            "entry": entry,
            "record": record,
            "canonical": canonical(record).decode(),
            "leaf_hash": record_hash,
        },
        "Vector: signing-key": {
            "seed_hex": SEED.hex(),
            "public_key_b64": base64.b64encode(raw).decode(),
            "public_key_pem": pem,
            "key_id": key_id(public),
        },
        "Vector: checkpoint": {
            "checkpoint": rfc_checkpoint.as_dict(),
            "signed": rfc_checkpoint.signed_bytes().decode(),
        },
        "Example: log.checkpoint request": {},
        "Example: log.checkpoint reply": {"ok": True, "checkpoint": example.as_dict()},
        "Example: checkpoint message": example.as_dict(),
        "Example: log.consistency request": {"first": 1, "second": 3},
        "Example: log.consistency reply": {"ok": True, **_consistency(1, 3, EXAMPLE_TREE)},
        "Example: log.leaves request": {"start": 1, "end": 2},
        "Example: log.leaves reply": {
            "ok": True,
            "start": 1,
            "end": 2,
            "leaves": [{"index": 1, "leaf_hash": record_hash, "leaf": record}],
        },
        "Example: verify request": {"run_id": ARTIFACT["run_id"]},
        "Example: verify reply": {
            "ok": True,
            "run_id": ARTIFACT["run_id"],
            "valid": all(check["ok"] for check in checks),
            "checks": checks,
            "log": {
                "leaf_index": 1,
                "leaf": record,
                "leaf_hash": record_hash,
                "tree_size": 3,
                "inclusion_proof": hexes(merkle.inclusion_proof(1, 3, EXAMPLE_TREE)),
                "checkpoint": example.as_dict(),
            },
        },
    }


def _same(value: Any, expected: Any) -> bool:
    """Equal as JSON: ``true`` is not ``1``, nor ``1.0`` the integer ``1``."""
    return json.dumps(value, sort_keys=True) == json.dumps(expected, sort_keys=True)


Block = dict[str, Any]


def _empty_tree(value: Block, text: str) -> None:
    assert value["root_hash"] == hashlib.sha256(b"").hexdigest()


def _rfc6962_tree(value: Block, text: str) -> None:
    compact = merkle.CompactRange()
    for data, hashed, head in zip(
        value["leaves_hex"], value["leaf_hashes"], value["heads"], strict=True
    ):
        assert hashlib.sha256(b"\x00" + bytes.fromhex(data)).hexdigest() == hashed
        compact.append(bytes.fromhex(hashed))
        assert (compact.size, compact.root().hex()) == (head["tree_size"], head["root_hash"])


def _inclusion(value: Block, text: str) -> None:
    proof = [bytes.fromhex(h) for h in value["inclusion_proof"]]
    leaf, root = bytes.fromhex(value["leaf_hash"]), bytes.fromhex(value["root_hash"])
    assert merkle.verify_inclusion(leaf, value["leaf_index"], value["tree_size"], proof, root)


def _consistency_proof(value: Block, text: str) -> None:
    ConsistencyProof.model_validate(value)
    first, second = bytes.fromhex(value["first_root"]), bytes.fromhex(value["second_root"])
    proof = [bytes.fromhex(h) for h in value["proof"]]
    assert merkle.verify_consistency(value["first"], value["second"], first, second, proof)


def _leaf_record(value: Block, text: str) -> None:
    record = LeafRecord.model_validate(value["record"]).model_dump(by_alias=True)
    assert canonical(record) == record_bytes(record) == value["canonical"].encode()
    digest = hashlib.sha256(b"\x00" + value["canonical"].encode()).hexdigest()
    assert digest == value["leaf_hash"]
    assert record["artifact_sha256"] == sha256_json(value["artifact"])
    assert record["entry_sha256"] == sha256_json(value["entry"])
    assert created_entry(value["artifact"]) == value["entry"]


def _signing_key(value: Block, text: str) -> None:
    public = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(value["seed_hex"])).public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64encode(raw).decode() == value["public_key_b64"]
    pem = load_pem_public_key(value["public_key_pem"].encode())
    assert isinstance(pem, Ed25519PublicKey)
    assert pem.public_bytes(Encoding.Raw, PublicFormat.Raw) == raw
    assert hashlib.sha256(raw).hexdigest() == value["key_id"] == key_id(public)


def _checkpoint_valid(body: Any) -> Checkpoint:
    """A client's check of a checkpoint: its fields, its key id and its signature."""
    checkpoint = Checkpoint.model_validate(body)
    assert signature_valid(checkpoint, seed_key().public_key())
    return checkpoint


def _signed_checkpoint(value: Block, text: str) -> None:
    checkpoint = _checkpoint_valid(value["checkpoint"])
    assert checkpoint.signed_bytes() == value["signed"].encode()
    public = seed_key().public_key()
    public.verify(base64.b64decode(checkpoint.signature), value["signed"].encode())


def _checkpoint_reply(value: Block, text: str) -> None:
    _checkpoint_valid(CheckpointReply.model_validate(value).checkpoint)


def _checkpoint_message(value: Block, text: str) -> None:
    assert text == canonical(_checkpoint_valid(value).as_dict()).decode()


def _leaves_request(value: Block, text: str) -> None:
    request = LogLeavesRequest.model_validate(value)
    assert request.end is not None
    assert request.start < request.end <= request.start + MAX_LEAVES


def _leaves_reply(value: Block, text: str) -> None:
    for item in LeafRange.model_validate(value).leaves:
        LeafRecord.model_validate(item.leaf)
        assert leaf_hash(item.leaf).hex() == item.leaf_hash


def _verify_reply(value: Block, text: str) -> None:
    report = VerifyReport.model_validate(value)
    assert report.valid == all(check.ok for check in report.checks)
    assert report.log is not None
    checkpoint = _checkpoint_valid(report.log.checkpoint)
    assert report.log.tree_size == checkpoint.tree_size
    assert leaf_hash(report.log.leaf).hex() == report.log.leaf_hash
    hex_proof, index = report.log.inclusion_proof, report.log.leaf_index
    assert inclusion_valid(report.log.leaf, index, hex_proof, checkpoint)


def _model(model: type[BaseModel]) -> Callable[[Block, str], None]:
    def check(value: Block, text: str) -> None:
        model.model_validate(value)

    return check


# What a client verifies in each block with the primitives alone (CONTRACT section 9.6).
CLIENT_CHECKS: dict[str, Callable[[Block, str], None]] = {
    "Example: log.checkpoint request": _model(LogCheckpointRequest),
    "Example: log.checkpoint reply": _checkpoint_reply,
    "Example: checkpoint message": _checkpoint_message,
    "Example: log.consistency request": _model(LogConsistencyRequest),
    "Example: log.consistency reply": _consistency_proof,
    "Example: log.leaves request": _leaves_request,
    "Example: log.leaves reply": _leaves_reply,
    "Example: verify request": _model(GetRequest),
    "Example: verify reply": _verify_reply,
    "Vector: empty-tree": _empty_tree,
    "Vector: rfc6962-tree": _rfc6962_tree,
    "Vector: rfc6962-inclusion": _inclusion,
    "Vector: rfc6962-consistency-1-3": _consistency_proof,
    "Vector: rfc6962-consistency-2-3": _consistency_proof,
    "Vector: leaf-record": _leaf_record,
    "Vector: signing-key": _signing_key,
    "Vector: checkpoint": _signed_checkpoint,
}
BLOCK_NAMES = tuple(CLIENT_CHECKS)  # in the document's order


def check_block(name: str, text: str) -> None:
    """Raise (AssertionError, ValueError) unless the block ``text`` under the heading ``name`` is
    exactly what the code computes, and verifies."""
    value = parse_json(text)
    assert isinstance(value, dict), f"{name}: not one JSON object"
    expected = expected_blocks()[name]
    assert _same(value, expected), f"{name}: the document's block is not the code's"
    CLIENT_CHECKS[name](value, text)


def _scalar_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every scalar in ``value``, and of every empty container (one can grow)."""
    if isinstance(value, dict):
        items: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return [path]
    if not items:
        return [path]
    return [p for key, child in items for p in _scalar_paths(child, (*path, key))]


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("0" if not value.endswith("0") else "1")
    if isinstance(value, dict):
        return {"extra": 0}
    if isinstance(value, list):
        return [0]
    return 0  # null


def _mutated(value: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return _changed(value)
    copy = json.loads(json.dumps(value))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = _changed(parent[path[-1]])
    return copy


class TestDocumentVectors:
    """``contracts/TRANSPARENCY.md`` holds the vectors and examples the code computes: every
    ```json block is recomputed and verified, so that the document cannot drift."""

    def test_every_block_is_named_and_checked(self) -> None:
        """One json block per vector or example heading, no block unaccounted for."""
        assert tuple(document_blocks(document())) == BLOCK_NAMES
        assert set(expected_blocks()) == set(BLOCK_NAMES)

    @pytest.mark.parametrize("name", BLOCK_NAMES)
    def test_block(self, name: str) -> None:
        check_block(name, document_blocks(document())[name])

    @pytest.mark.parametrize("name", BLOCK_NAMES)
    def test_any_change_of_a_block_fails(self, name: str) -> None:
        """Each value of a block changed alone (an empty object or list given a member) is
        caught: the checks above are not vacuous."""
        text = document_blocks(document())[name]
        value = parse_json(text)
        paths = _scalar_paths(value)
        assert paths
        for path in paths:
            changed = json.dumps(_mutated(value, path), indent=2, ensure_ascii=False)
            with pytest.raises((AssertionError, ValueError)):
                check_block(name, changed)

    def test_the_checkpoint_message_is_byte_exact(self) -> None:
        """The message block is the canonical body itself, not merely its value."""
        text = document_blocks(document())["Example: checkpoint message"]
        spaced = json.dumps(json.loads(text), indent=2)
        with pytest.raises(AssertionError):
            check_block("Example: checkpoint message", spaced)

    def test_every_finding_kind_is_in_the_table(self) -> None:
        """The audit's table (9.7) names exactly the kinds ``log_checks`` can emit."""
        source = Path(log_checks.__file__).read_text(encoding="utf-8")
        emitted = set(_FOUND.findall(source))
        assert len(_FOUND.findall(source)) == source.count("self._found(")  # all literal kinds
        assert len(emitted) >= 10
        section = document().split("\n## 9.7 ", 1)[1].split("\n## 9.8 ", 1)[0]
        assert set(_TABLE_KIND.findall(section)) == emitted

    def test_names_and_constants(self) -> None:
        """The schemas, subjects, streams, headers, ops and checks the document names are the
        code's."""
        subjects = Subjects()
        checks = {c.name for c in run_checks(ARTIFACT, [created_entry(ARTIFACT)], [EXAMPLE_RECORD])}
        names = {
            LEAF_SCHEMA,
            CHECKPOINT_SCHEMA,
            ADOPTED,
            subjects.checkpoints,
            subjects.checkpoints_stream,
            f"{subjects.root}.store.log.<run_id>",
            f"{subjects.stream_prefix}_LOG",
            EXPECTED_LAST_SEQ,
            EXPECTED_LAST_SUBJECT_SEQ,
            "log.checkpoint",
            "log.consistency",
            "log.leaves",
            *checks,
        }
        text = document()
        shown = {name for name in names if f"`{name}`" in text or f'`"{name}"`' in text}
        assert names == shown
        assert f"`start + {MAX_LEAVES}`" in text
        assert f"`{merkle.EMPTY_ROOT.hex()[:8]}…{merkle.EMPTY_ROOT.hex()[-4:]}`" in text
