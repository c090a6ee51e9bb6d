"""``worker.signing``: the checkpoint signing key's files (CONTRACT section 9).

Made on first use (0600, with its public key beside it), the same key ever after, one key when
creators race; refused with a message that names the file and never shows key material.
"""

from __future__ import annotations

import base64
import logging
import multiprocessing
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from contracts.transparency import key_id
from worker.signing import (
    SigningKeyError,
    describe,
    load_or_create,
    load_private,
    load_public,
    public_path,
)

SEED = bytes(range(32))


def raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_pem(key: Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def assert_no_key_material(message: str, pem: bytes) -> None:
    """Nothing of the PEM's body in the message: neither its armour nor any line of base64."""
    assert "BEGIN" not in message
    assert "PRIVATE" not in message
    for line in pem.decode(errors="replace").splitlines():
        if line and not line.startswith("-----"):
            assert line not in message
            assert line[:16] not in message


class TestLoadOrCreate:
    def test_makes_the_key_and_its_public_key(self, tmp_path: Path) -> None:
        path = tmp_path / "data" / "signing.key"
        key = load_or_create(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        pub = public_path(path)
        assert pub == tmp_path / "data" / "signing.key.pub"
        assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
        assert b"PRIVATE" not in pub.read_bytes()
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS #8
        assert raw_public(load_public(pub)) == raw_public(key.public_key())
        assert raw_private(load_private(path)) == raw_private(key)
        assert sorted(p.name for p in path.parent.iterdir()) == ["signing.key", "signing.key.pub"]

    def test_same_key_next_time(self, tmp_path: Path) -> None:
        path = tmp_path / "signing.key"
        first = load_or_create(path)
        data = path.read_bytes()
        pub = public_path(path).read_bytes()
        again = load_or_create(path)
        assert raw_private(again) == raw_private(first)
        assert path.read_bytes() == data
        assert public_path(path).read_bytes() == pub

    def test_existing_key_is_used(self, tmp_path: Path) -> None:
        """A key put there by the operator (no .pub yet): used, and its .pub written."""
        path = tmp_path / "signing.key"
        path.write_bytes(private_pem(Ed25519PrivateKey.from_private_bytes(SEED)))
        key = load_or_create(path)
        assert raw_private(key) == SEED
        assert raw_public(load_public(public_path(path))) == raw_public(key.public_key())

    def test_lost_public_key_is_written_again(self, tmp_path: Path) -> None:
        path = tmp_path / "signing.key"
        key = load_or_create(path)
        public_path(path).unlink()
        load_or_create(path)
        assert raw_public(load_public(public_path(path))) == raw_public(key.public_key())

    def test_existing_bad_key_is_not_replaced(self, tmp_path: Path) -> None:
        """A file that is not a key is refused, never overwritten with a new key."""
        path = tmp_path / "signing.key"
        path.write_bytes(b"garbage")
        with pytest.raises(SigningKeyError, match="not an unencrypted PEM"):
            load_or_create(path)
        assert path.read_bytes() == b"garbage"

    def test_creation_log_shows_no_secret(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "signing.key"
        with caplog.at_level(logging.DEBUG, logger="worker.signing"):
            key = load_or_create(path)
        text = caplog.text
        assert key_id(key.public_key()) in text
        assert_no_key_material(text, path.read_bytes())
        assert base64.b64encode(raw_private(key)).decode() not in text

    def test_racing_threads_keep_one_key(self, tmp_path: Path) -> None:
        """Creators in one process starting at the same moment all end with the one key on
        disk, its .pub that key's, and no temp file left."""
        failed: dict[str, int] = {}
        for round_ in range(30):
            path = tmp_path / str(round_) / "signing.key"
            keys, errors = race(path, threads=4)
            for exc in errors:
                failed[f"raised {exc!r}"] = failed.get(f"raised {exc!r}", 0) + 1
            try:
                assert_one_key(path, keys)
            except AssertionError as exc:
                failed[str(exc).splitlines()[0]] = failed.get(str(exc).splitlines()[0], 0) + 1
        assert failed == {}, f"of 30 rounds: {failed}"

    def test_racing_processes_keep_one_key(self, tmp_path: Path) -> None:
        """Two processes starting at once (the documented case) keep one key."""
        ctx = multiprocessing.get_context("spawn")
        path = tmp_path / "signing.key"
        start, out = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_create_in_child, args=(str(path), start, out)) for _ in range(2)
        ]
        for proc in procs:
            proc.start()
        try:
            keys = [out.get(timeout=60) for _ in procs]
        finally:
            for proc in procs:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
        assert [proc.exitcode for proc in procs] == [0, 0]
        assert_one_key(path, keys)


def race(path: Path, threads: int) -> tuple[list[bytes], list[BaseException]]:
    """``load_or_create(path)`` in ``threads`` threads released at once: their keys, errors."""
    barrier = threading.Barrier(threads)
    keys: list[bytes] = []
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait(10)
        try:
            keys.append(raw_private(load_or_create(path)))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=create) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    return keys, errors


def assert_one_key(path: Path, keys: list[bytes]) -> None:
    """Every creator got the key on disk, the .pub is that key's, no temp file is left."""
    on_disk = raw_private(load_private(path))
    public = raw_public(load_public(public_path(path)))
    assert public == raw_public(load_private(path).public_key()), ".pub of another key"
    assert set(keys) == {on_disk}, "creators got another key than the file's"
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["signing.key", "signing.key.pub"], f"files left: {names}"


def _create_in_child(path: str, start: Any, out: Any) -> None:
    start.wait(30)
    out.put(raw_private(load_or_create(Path(path))))


class TestLoadPrivate:
    def test_missing(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.key"
        with pytest.raises(SigningKeyError) as caught:
            load_private(path)
        assert str(path) in str(caught.value)

    def test_a_directory(self, tmp_path: Path) -> None:
        with pytest.raises(SigningKeyError) as caught:
            load_private(tmp_path)
        assert str(tmp_path) in str(caught.value)

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"not a key at all",
            b"\x00\xff" * 40,
            b"-----BEGIN PRIVATE KEY-----\nAAAAsecretish\n-----END PRIVATE KEY-----\n",
            raw_private(Ed25519PrivateKey.from_private_bytes(SEED)),  # raw bytes, no PEM
            Ed25519PrivateKey.from_private_bytes(SEED).private_bytes(
                Encoding.DER, PrivateFormat.PKCS8, NoEncryption()
            ),
            Ed25519PrivateKey.from_private_bytes(SEED)
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        ],
    )
    def test_not_a_pem_private_key(self, tmp_path: Path, data: bytes) -> None:
        path = tmp_path / "signing.key"
        path.write_bytes(data)
        with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key") as caught:
            load_private(path)
        message = str(caught.value)
        assert str(path) in message
        assert_no_key_material(message, data if data.isascii() else b"")
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__

    def test_encrypted(self, tmp_path: Path) -> None:
        path = tmp_path / "signing.key"
        pem = Ed25519PrivateKey.from_private_bytes(SEED).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw")
        )
        path.write_bytes(pem)
        with pytest.raises(SigningKeyError, match="not an unencrypted PEM") as caught:
            load_private(path)
        assert_no_key_material(str(caught.value), pem)

    @pytest.mark.parametrize("kind", ["rsa", "ec"])
    def test_not_ed25519(self, tmp_path: Path, kind: str) -> None:
        key = (
            rsa.generate_private_key(public_exponent=65537, key_size=1024)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        pem = private_pem(key)
        path = tmp_path / f"{kind}.key"
        path.write_bytes(pem)
        with pytest.raises(SigningKeyError, match="not an Ed25519 key") as caught:
            load_private(path)
        message = str(caught.value)
        assert str(path) in message
        assert_no_key_material(message, pem)

    def test_ed25519_pem(self, tmp_path: Path) -> None:
        path = tmp_path / "k.pem"
        path.write_bytes(private_pem(Ed25519PrivateKey.from_private_bytes(SEED)))
        assert raw_private(load_private(path)) == SEED


class TestLoadPublic:
    def test_the_pub_file_and_the_private_key(self, tmp_path: Path) -> None:
        path = tmp_path / "signing.key"
        key = load_or_create(path)
        want = raw_public(key.public_key())
        assert raw_public(load_public(public_path(path))) == want
        assert raw_public(load_public(path)) == want  # a private key's PEM: its public key

    def test_missing(self, tmp_path: Path) -> None:
        path = tmp_path / "none.pub"
        with pytest.raises(SigningKeyError, match="public key") as caught:
            load_public(path)
        assert str(path) in str(caught.value)

    @pytest.mark.parametrize("kind", ["rsa", "ec"])
    def test_not_ed25519(self, tmp_path: Path, kind: str) -> None:
        key = (
            rsa.generate_private_key(public_exponent=65537, key_size=1024)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        for name, pem in (
            (
                "k.pub",
                key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
            ),
            ("k.key", private_pem(key)),
        ):
            path = tmp_path / name
            path.write_bytes(pem)
            with pytest.raises(SigningKeyError, match="not an Ed25519 key") as caught:
                load_public(path)
            assert str(path) in str(caught.value)
            assert_no_key_material(str(caught.value), pem)

    def test_garbage(self, tmp_path: Path) -> None:
        path = tmp_path / "k.pub"
        path.write_bytes(b"-----BEGIN PUBLIC KEY-----\nQUJDREVGR0g=\n-----END PUBLIC KEY-----\n")
        with pytest.raises(SigningKeyError) as caught:
            load_public(path)
        assert str(path) in str(caught.value)
        assert "QUJDREVGR0g" not in str(caught.value)


def test_describe_shows_the_public_key_only() -> None:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    text = describe(key.public_key())
    assert text == (
        "key id 56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c, "
        "public key (base64) A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
    )
    assert base64.b64encode(SEED).decode() not in text
    assert SEED.hex() not in text
