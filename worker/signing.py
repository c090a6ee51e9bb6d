"""The checkpoint signing key: an Ed25519 key in a PEM file, its public key beside it.

``RMOS_SIGNING_KEY`` names the private key (PKCS #8 PEM, as ``openssl genpkey -algorithm
ed25519`` writes it). Unset, the worker uses ``<data dir>/signing.key``, made on first start:
written 0600 under a temp name and linked into place (two processes starting at once keep one
key), with the public key (SubjectPublicKeyInfo PEM) in ``signing.key.pub``. Auditors need only
the ``.pub`` file. Nothing here ever shows key material in a message.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from contracts.transparency import key_id

log = logging.getLogger(__name__)
DEFAULT_NAME = "signing.key"


class SigningKeyError(ValueError):
    """A key file that is missing, unreadable or not an Ed25519 key (the message names the
    file, never its content)."""


def public_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def load_private(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"signing key {path}: {exc.strerror or exc}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningKeyError(
            f"signing key {path}: not an unencrypted PEM private key (PKCS #8)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path}: not an Ed25519 key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in ``path``: a public key PEM (or a private key's)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"public key {path}: {exc.strerror or exc}") from None
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return load_private(path).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"public key {path}: not an Ed25519 key")
    return key


def describe(public: Ed25519PublicKey) -> str:
    """The public key in one line: its key id and its 32 raw bytes in base64."""
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return f"key id {key_id(public)}, public key (base64) {base64.b64encode(raw).decode()}"


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The key at ``path``; made first (with its ``.pub``) when there is none."""
    if not path.exists():
        _create(path)
    key = load_private(path)
    pub = public_path(path)
    if not pub.exists():
        _write_new(pub, _public_pem(key.public_key()), 0o644)
    return key


def _public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _create(path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    if _write_new(path, pem, 0o600):
        _write_new(public_path(path), _public_pem(key.public_key()), 0o644)
        log.warning(
            "made a checkpoint signing key %s (public key in %s); %s",
            path,
            public_path(path),
            describe(key.public_key()),
        )


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Write ``path`` whole unless it exists; True when this call made it."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(name)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return True
