"""Server lists of ``RMOS_NATS_URL``, and the URL as messages show it."""

from __future__ import annotations

import logging
import ssl

import nats.errors
import pytest

from worker.connection import _Attempt, _Callbacks, readable, servers, shown


class TestServers:
    def test_one(self) -> None:
        assert servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]

    def test_a_cluster(self) -> None:
        """Comma-separated, spaces and empty entries ignored."""
        given = "nats://a:4222, nats://b:4222,,nats://c:4222 "
        assert servers(given) == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]

    def test_none(self) -> None:
        with pytest.raises(ValueError, match="no NATS server URL"):
            servers(" , ")


class TestShown:
    """A URL setting as messages show it: every server's user information masked."""

    def test_a_cluster_with_credentials(self) -> None:
        given = "nats://alice:s3cret@h:4222,nats://tok@h2:4222"
        assert shown(given) == "nats://***@h:4222,nats://***@h2:4222"

    def test_without_credentials_unchanged(self) -> None:
        assert shown("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
        assert shown("tls://a:4222, nats://b:4222") == "tls://a:4222,nats://b:4222"

    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            ("nats://alice:p@ss@h:4222", "nats://***@h:4222"),  # the last @ ends the user part
            ("alice:s3cret@h:4222", "***@h:4222"),  # no scheme
            ("ws://u:s3cret@h:8080/path?x=y@z", "ws://***@h:8080/path?x=y@z"),
            ("nats://u:%40s3cret@h", "nats://***@h"),
        ],
    )
    def test_no_secret_left(self, given: str, expected: str) -> None:
        assert shown(given) == expected
        assert "s3cret" not in shown(given)
        assert "ss@" not in shown(given)


class TestReadable:
    """The errors of a connection attempt, as an operator reads them."""

    def test_refused(self) -> None:
        error = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")
        assert readable(error) == "connection refused"

    def test_no_answer(self) -> None:
        assert readable(TimeoutError()) == "timed out: no answer from the server"

    def test_authorization(self) -> None:
        reason = readable(nats.errors.Error("nats: 'Authorization Violation'"))
        assert reason == "authorization violation: check the user, password, token, nkey or creds"

    def test_untrusted_certificate(self) -> None:
        error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] ...")
        error.verify_message = "self-signed certificate"
        expected = "TLS handshake failed: certificate verify failed (self-signed certificate)"
        assert readable(error) == expected


async def test_a_recurring_error_is_logged_once_until_reconnected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outage of NATS: a line when it begins, one when the connection is back, not one per
    reconnect attempt."""
    attempt = _Attempt(servers=1)
    attempt.connected = True
    callbacks = _Callbacks(attempt, {}, "rmos-worker")
    with caplog.at_level(logging.DEBUG, logger="worker.connection"):
        for _ in range(5):
            await callbacks.on_error(ConnectionRefusedError(111, "Connect call failed"))
        await callbacks.on_reconnected()
        await callbacks.on_error(ConnectionRefusedError(111, "Connect call failed"))
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert said == [
        ("WARNING", "rmos-worker connection: connection refused"),
        ("INFO", "rmos-worker connection is back"),
        ("WARNING", "rmos-worker connection: connection refused"),
    ]
