"""The tamper-evident log of CONTRACT section 9: leaf records, signed checkpoints, proofs.

Every stored revision of every run is one leaf of an append-only Merkle tree (``merkle``, RFC
9162). A leaf is the canonical JSON of its record: which run, which revision, and the SHA-256 of
the artifact at that revision and of its history entry, so that nothing a reader is served can be
rewritten without the tree head changing. The worker signs tree heads (checkpoints) with
Ed25519 over their canonical JSON; anyone holding the public key checks them with this module
alone.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field

from contracts import merkle
from contracts.canonical import MAX_SAFE_INTEGER, canonical
from contracts.models import RunId, Sha256

LEAF_SCHEMA = "rmos.log_leaf.v1"
ADOPTED = "adopted"  # the change of a run's first leaf when the run is older than the log
CHECKPOINT_SCHEMA = "rmos.log_checkpoint.v1"


def leaf_record(
    artifact: dict[str, Any],
    entry: dict[str, Any],
    *,
    artifact_bytes: bytes | None = None,
    entry_bytes: bytes | None = None,
    adopted: bool = False,
) -> dict[str, Any]:
    """The leaf of one revision: ``artifact`` as ``get`` returns it at that revision, ``entry``
    its ``history`` entry (for revision 1, the ``created`` entry). A caller that holds their
    canonical bytes already (the store writes exactly those) passes them: hashed, not encoded
    again. ``adopted``: the first leaf of a run stored before the log existed (its earlier
    revisions are not in the log; ``change`` is then ``"adopted"``)."""
    if artifact_bytes is None:
        artifact_bytes = canonical(artifact)
    if entry_bytes is None:
        entry_bytes = canonical(entry)
    return {
        "schema": LEAF_SCHEMA,
        "run_id": artifact["run_id"],
        "revision": artifact["revision"],
        "change": ADOPTED if adopted else entry["change"],
        "at": entry["at"],
        "content_sha256": artifact["content_sha256"],
        "artifact_sha256": hashlib.sha256(artifact_bytes).hexdigest(),
        "entry_sha256": hashlib.sha256(entry_bytes).hexdigest(),
    }


def record_bytes(record: dict[str, Any]) -> bytes:
    """``canonical(record)`` of a leaf record: one of ASCII strings and safe integers (as every
    record the worker makes) is canonical as orjson writes it with sorted keys, ten times
    cheaper than the general rule, which every other record gets."""
    if all(_plain(v) for v in record.values()):
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return canonical(record)


def _plain(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii()
    return type(value) is int and abs(value) <= MAX_SAFE_INTEGER


def leaf_hash(record: dict[str, Any]) -> bytes:
    """The tree's leaf hash of a record: SHA-256(0x00 || canonical(record))."""
    return merkle.leaf_hash(record_bytes(record))


class LeafRecord(BaseModel):
    """A leaf record as the log holds it (CONTRACT section 9)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_: Literal["rmos.log_leaf.v1"] = Field(alias="schema")
    run_id: RunId
    revision: int = Field(ge=1)
    change: str
    at: str
    content_sha256: Sha256
    artifact_sha256: Sha256
    entry_sha256: Sha256


def key_id(public: Ed25519PublicKey) -> str:
    """A key's name in checkpoints: the hex SHA-256 of its 32 raw public-key bytes."""
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


class Checkpoint(BaseModel):
    """A signed tree head: the log's first ``tree_size`` leaves have head ``root_hash``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    schema_: Literal["rmos.log_checkpoint.v1"] = Field("rmos.log_checkpoint.v1", alias="schema")
    origin: str = Field(min_length=1, max_length=256)
    tree_size: int = Field(ge=0)
    root_hash: Sha256
    issued_at: str
    key_id: Sha256
    signature: str = Field(min_length=1, max_length=128)  # base64 of 64 bytes

    def signed_bytes(self) -> bytes:
        """What the signature covers: the canonical JSON of every field but ``signature``."""
        return canonical(self.as_dict(signature=False))

    def as_dict(self, *, signature: bool = True) -> dict[str, Any]:
        body = self.model_dump(by_alias=True)
        if not signature:
            del body["signature"]
        return body

    @property
    def root(self) -> bytes:
        return bytes.fromhex(self.root_hash)


def sign_checkpoint(
    key: Ed25519PrivateKey, *, origin: str, tree_size: int, root: bytes, issued_at: str
) -> Checkpoint:
    """Sign the head ``root`` of a tree of ``tree_size`` leaves."""
    unsigned = Checkpoint(
        origin=origin,
        tree_size=tree_size,
        root_hash=root.hex(),
        issued_at=issued_at,
        key_id=key_id(key.public_key()),
        signature="-",
    )
    signature = key.sign(unsigned.signed_bytes())
    return unsigned.model_copy(update={"signature": base64.b64encode(signature).decode()})


def signature_valid(checkpoint: Checkpoint, public: Ed25519PublicKey) -> bool:
    """True when ``public`` signed exactly this checkpoint."""
    if checkpoint.key_id != key_id(public):
        return False
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
        public.verify(signature, checkpoint.signed_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


def hexes(hashes: list[bytes]) -> list[str]:
    """A proof as the wire carries it: lower-case hex strings, nearest the leaf first."""
    return [h.hex() for h in hashes]


def inclusion_valid(
    record: dict[str, Any], index: int, proof: list[str], checkpoint: Checkpoint
) -> bool:
    """Does ``proof`` (hex, nearest the leaf first) put ``record`` at ``index`` of the tree
    ``checkpoint`` signs? (Check the checkpoint's signature with ``signature_valid``.)"""
    try:
        path = [bytes.fromhex(h) for h in proof]
    except ValueError:
        return False
    return merkle.verify_inclusion(
        leaf_hash(record), index, checkpoint.tree_size, path, checkpoint.root
    )


def consistency_valid(old: Checkpoint, new: Checkpoint, proof: list[str]) -> bool:
    """Does ``proof`` show the tree ``old`` signs a prefix of the tree ``new`` signs?"""
    try:
        path = [bytes.fromhex(h) for h in proof]
    except ValueError:
        return False
    return merkle.verify_consistency(old.tree_size, new.tree_size, old.root, new.root, path)
