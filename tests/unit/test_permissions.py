"""The least-privilege roles of ``rmos-runs permissions`` (CONTRACT section 8), without a server.

tests/integration/test_permissions.py shows each program doing its whole job with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.subjects import EVENTS_CONSUMER, EXPLAINER_CONSUMER, PATCHES_CONSUMER, Subjects
from worker import cli
from worker.permissions import (
    INBOX,
    ROLES,
    Permissions,
    Role,
    StoreNames,
    allowed,
    role_permissions,
)
from worker.store.jetstream import JetStreamStore

DEFAULT = Subjects()
OTHER = Subjects(prefix="acme.prod.runs", stream_prefix="ACME")
# the inbox, and the stream names the object store's reads look a stream up with (nats-py)
ANY_DEPLOYMENT = {INBOX, "$JS.API.STREAM.NAMES"}
RUN = "run_467d95e1bee1f48fc5dfa0a6a422cd7d"
API_OPS = (
    "get",
    "list",
    "diff",
    "verify",
    "history",
    "patch_meta",
    "create",
    "explain",
    "attachments.put",
    "attachments.get",
)


def can_publish(role: Role, subject: str, subjects: Subjects = DEFAULT, **kw: str) -> bool:
    return allowed(role_permissions(role, subjects, **kw).publish, subject)


def can_subscribe(role: Role, subject: str, subjects: Subjects = DEFAULT) -> bool:
    return allowed(role_permissions(role, subjects).subscribe, subject)


def api_ops(role: Role) -> set[str]:
    return {op for op in API_OPS if can_publish(role, f"rmos.runs.v1.api.{op}")}


class TestAllowed:
    """The subject matching the tests rely on is nats-server's."""

    @pytest.mark.parametrize(
        ("pattern", "subject", "expected"),
        [
            ("a.b", "a.b", True),
            ("a.b", "a.b.c", False),
            ("a.*", "a.b", True),
            ("a.*", "a.b.c", False),
            ("a.*", "a", False),
            ("a.>", "a.b.c", True),
            ("a.>", "a", False),
            ("a.*.c", "a.b.c", True),
            ("a.*.c", "a.b.d", False),
            ("$JS.ACK.S.C.>", "$JS.ACK.S.C.1.2.3.4.5", True),
            ("$JS.ACK.S.C.>", "$JS.ACK.S.D.1", False),
        ],
    )
    def test_matching(self, pattern: str, subject: str, expected: bool) -> None:
        assert allowed([pattern], subject) is expected


class TestShape:
    @pytest.mark.parametrize("role", ROLES)
    def test_json_shape(self, role: Role) -> None:
        body = role_permissions(role, DEFAULT).as_json()
        assert set(body) == {"publish", "subscribe"}
        assert set(body["publish"]) == {"allow"}
        assert set(body["subscribe"]) == {"allow"}
        allow = body["publish"]["allow"] + body["subscribe"]["allow"]
        assert allow
        assert all(isinstance(s, str) and s for s in allow)
        assert len(set(body["publish"]["allow"])) == len(body["publish"]["allow"])

    def test_server_config(self) -> None:
        perms = Permissions(("a.b", "$JS.API.X"), ("_INBOX.>",))
        assert perms.server_config("  ").splitlines() == [
            "  permissions: {",
            "    publish: { allow: [",
            '      "a.b",',
            '      "$JS.API.X"',
            "    ] }",
            "    subscribe: { allow: [",
            '      "_INBOX.>"',
            "    ] }",
            "  }",
        ]

    @pytest.mark.parametrize("role", ROLES)
    def test_nobody_gets_everything(self, role: Role) -> None:
        """No bare wildcard, no whole JetStream API, no deletes of streams or messages."""
        perms = role_permissions(role, DEFAULT)
        for subject in (*perms.publish, *perms.subscribe):
            assert subject.split(".")[0] not in {">", "*"}
        for probe in ("$JS.API.STREAM.DELETE.RMOS_RUN_EVENTS", "$JS.API.STREAM.PURGE.RMOS_DLQ"):
            assert not allowed(perms.publish, probe)
        assert not allowed(perms.publish, "$JS.API.STREAM.MSG.DELETE.KV_RMOS_RUNS")
        assert not allowed(perms.publish, "$JS.API.ACCOUNT.PURGE.x")
        assert not allowed(perms.subscribe, "rmos.runs.v1.events.engine-a")  # core snooping


class TestPrefixes:
    @pytest.mark.parametrize("role", ROLES)
    def test_every_subject_is_of_the_deployment(self, role: Role) -> None:
        """Under other prefixes nothing of the default deployment is left (the consumer
        names are the contract's, whatever the prefix)."""
        perms = role_permissions(role, OTHER)
        for subject in (*perms.publish, *perms.subscribe):
            for consumer in (EVENTS_CONSUMER, PATCHES_CONSUMER, EXPLAINER_CONSUMER):
                subject = subject.replace(f".{consumer}", ".CONSUMER")
            assert "rmos" not in subject.lower(), subject
            assert subject in ANY_DEPLOYMENT or "acme" in subject.lower(), subject

    def test_other_prefixes_applied(self) -> None:
        assert can_publish("engine", "acme.prod.runs.v1.events.engine-a", OTHER)
        assert can_publish("engine", "acme.prod.runs.v1.api.create", OTHER)
        assert not can_publish("engine", "rmos.runs.v1.events.engine-a", OTHER)
        assert can_publish(
            "explainer", "$JS.API.CONSUMER.MSG.NEXT.ACME_EXPLAIN.rmos-explainer", OTHER
        )
        assert can_publish("worker", "$JS.API.STREAM.CREATE.KV_ACME_RUNS", OTHER)
        assert can_publish("worker", "$KV.ACME_RUNS." + RUN, OTHER)
        assert can_publish("operator", "$JS.API.STREAM.MSG.GET.ACME_DLQ", OTHER)

    def test_store_names_are_the_stores(self, tmp_path: Path) -> None:
        """The worker's list names the jetstream store's buckets and streams, whatever the
        prefix (the store derives them itself)."""

        async def never() -> None:
            raise AssertionError

        def no_js() -> None:
            raise AssertionError

        for subjects in (DEFAULT, OTHER):
            store = JetStreamStore(no_js, never, subjects, tmp_path)  # type: ignore[arg-type]
            names = StoreNames.of(subjects)
            assert names.runs_bucket == store.runs_bucket
            assert names.blob_meta_bucket == store.blob_meta_bucket
            assert names.blobs_bucket == store.blobs_bucket
            assert names.history_stream == store.history_stream
            assert names.history_subject == store._history_subject


class TestEngine:
    def test_publishes_events_and_three_ops(self) -> None:
        assert can_publish("engine", "rmos.runs.v1.events.engine-a")
        assert can_publish("engine", "rmos.runs.v1.events.other")
        assert not can_publish("engine", "rmos.runs.v1.events.a.b")
        assert api_ops("engine") == {"create", "get", "attachments.put"}
        assert role_permissions("engine", DEFAULT).subscribe == (INBOX,)

    def test_source_narrows(self) -> None:
        assert can_publish("engine", "rmos.runs.v1.events.engine-a", source="engine-a")
        assert not can_publish("engine", "rmos.runs.v1.events.engine-b", source="engine-a")
        perms = role_permissions("engine", DEFAULT, "engine-a")
        assert "rmos.runs.v1.events.*" not in perms.publish
        assert api_ops("engine") == {"create", "get", "attachments.put"}

    def test_no_patches_no_meta(self) -> None:
        assert not can_publish("engine", f"rmos.runs.v1.explain.patch.{RUN}")
        assert not can_publish("engine", "rmos.runs.v1.explain.requested")
        assert not can_publish("engine", f"rmos.runs.v1.explain.status.{RUN}")
        assert not can_publish("engine", "rmos.runs.v1.api.patch_meta")
        assert not can_publish("engine", "rmos.runs.v1.api.explain")
        assert not can_publish("engine", "rmos.runs.v1.dlq.INVALID_JSON")
        assert not [s for s in role_permissions("engine", DEFAULT).publish if s.startswith("$")]

    @pytest.mark.parametrize("source", ["", "a.b", "a*", ">", "x" * 65, "white space"])
    def test_bad_source(self, source: str) -> None:
        with pytest.raises(ValueError, match="bad source"):
            role_permissions("engine", DEFAULT, source)

    @pytest.mark.parametrize("role", ["worker", "explainer", "operator"])
    def test_source_is_for_engines(self, role: Role) -> None:
        with pytest.raises(ValueError, match="engine role only"):
            role_permissions(role, DEFAULT, "engine-a")


class TestExplainer:
    def test_its_consumer_only(self) -> None:
        js = [s for s in role_permissions("explainer", DEFAULT).publish if s.startswith("$JS")]
        assert js
        assert all(".RMOS_EXPLAIN.rmos-explainer" in s for s in js)
        assert can_publish(
            "explainer",
            "$JS.API.CONSUMER.CREATE.RMOS_EXPLAIN.rmos-explainer.rmos.runs.v1.explain.requested",
        )
        # the filter is pinned: not the patches, not the status changes, not everything
        for other_filter in ("rmos.runs.v1.explain.>", "rmos.runs.v1.explain.patch.*"):
            subject = f"$JS.API.CONSUMER.CREATE.RMOS_EXPLAIN.rmos-explainer.{other_filter}"
            assert not can_publish("explainer", subject)
        assert not can_publish(
            "explainer", f"$JS.API.CONSUMER.MSG.NEXT.RMOS_EXPLAIN.{PATCHES_CONSUMER}"
        )
        assert not can_publish("explainer", "$JS.API.STREAM.MSG.GET.RMOS_EXPLAIN")
        assert can_publish("explainer", f"$JS.ACK.RMOS_EXPLAIN.{EXPLAINER_CONSUMER}.1.2.3.4.5")

    def test_patches_and_three_ops(self) -> None:
        assert can_publish("explainer", f"rmos.runs.v1.explain.patch.{RUN}")
        assert api_ops("explainer") == {"get", "attachments.put", "attachments.get"}

    def test_no_events_no_meta(self) -> None:
        assert not can_publish("explainer", "rmos.runs.v1.events.engine-a")
        assert not can_publish("explainer", "rmos.runs.v1.explain.requested")
        assert not can_publish("explainer", f"rmos.runs.v1.explain.status.{RUN}")
        assert not can_publish("explainer", "rmos.runs.v1.api.create")
        assert not can_publish("explainer", "rmos.runs.v1.api.patch_meta")
        assert role_permissions("explainer", DEFAULT).subscribe == (INBOX,)


class TestOperator:
    def test_every_op_and_the_dead_letters(self) -> None:
        assert api_ops("operator") == set(API_OPS)
        assert can_publish("operator", "$JS.API.STREAM.INFO.RMOS_DLQ")
        assert can_publish("operator", "$JS.API.STREAM.MSG.GET.RMOS_DLQ")
        # dlq replay re-publishes to the original event or patch subject
        assert can_publish("operator", "rmos.runs.v1.events.engine-a")
        assert can_publish("operator", f"rmos.runs.v1.explain.patch.{RUN}")

    def test_reads_no_other_stream_and_declares_nothing(self) -> None:
        for subject in (
            "$JS.API.STREAM.MSG.GET.RMOS_RUN_EVENTS",
            "$JS.API.STREAM.MSG.GET.KV_RMOS_RUNS",
            "$JS.API.STREAM.CREATE.RMOS_DLQ",
            "$JS.API.STREAM.UPDATE.RMOS_DLQ",
            "$JS.API.CONSUMER.DURABLE.CREATE.RMOS_DLQ.x",
            "rmos.runs.v1.dlq.INVALID_JSON",  # dead letters are the worker's to write
            "rmos.runs.v1.explain.requested",
        ):
            assert not can_publish("operator", subject), subject
        assert role_permissions("operator", DEFAULT).subscribe == (INBOX,)


class TestWorker:
    def test_owns_its_streams_consumers_and_store(self) -> None:
        for stream in ("RMOS_RUN_EVENTS", "RMOS_EXPLAIN", "RMOS_DLQ", "KV_RMOS_RUNS"):
            assert can_publish("worker", f"$JS.API.STREAM.CREATE.{stream}")
            assert can_publish("worker", f"$JS.API.STREAM.UPDATE.{stream}")
        for stream, consumer in (
            ("RMOS_RUN_EVENTS", EVENTS_CONSUMER),
            ("RMOS_EXPLAIN", PATCHES_CONSUMER),
        ):
            assert can_publish("worker", f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}")
            assert can_publish("worker", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
            assert can_publish("worker", f"$JS.ACK.{stream}.{consumer}.1.2.3.4.5")
        assert can_publish("worker", "rmos.runs.v1.dlq.RUN_ID_CONFLICT")
        assert can_publish("worker", "rmos.runs.v1.explain.requested")
        assert can_publish("worker", f"rmos.runs.v1.explain.status.{RUN}")
        assert can_publish("worker", f"rmos.runs.v1.store.history.{RUN}")
        assert can_publish("worker", "_INBOX.abc.def")  # the API's replies
        assert can_subscribe("worker", "rmos.runs.v1.api.attachments.put")
        assert can_subscribe(
            "worker",
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.RMOS_RUN_EVENTS." + EVENTS_CONSUMER,
        )

    def test_not_what_others_do(self) -> None:
        assert not can_publish("worker", "rmos.runs.v1.events.engine-a")
        assert not can_publish("worker", f"rmos.runs.v1.explain.patch.{RUN}")
        assert api_ops("worker") == set()  # it serves the API, it asks nothing of it
        assert not can_publish(
            "worker", f"$JS.API.CONSUMER.MSG.NEXT.RMOS_EXPLAIN.{EXPLAINER_CONSUMER}"
        )
        assert not can_publish("worker", "$JS.API.CONSUMER.DURABLE.CREATE.RMOS_EXPLAIN.x")
        assert not can_subscribe("worker", "$JS.EVENT.ADVISORY.>")


class TestCommand:
    @pytest.mark.parametrize("role", ROLES)
    def test_json_is_the_function(
        self, role: Role, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("RMOS_SUBJECT_PREFIX", "acme.prod.runs")
        monkeypatch.setenv("RMOS_STREAM_PREFIX", "ACME")
        assert cli.main(["permissions", role, "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed == role_permissions(role, OTHER).as_json()

    def test_source_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["permissions", "engine", "--source", "engine-a", "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert "rmos.runs.v1.events.engine-a" in printed["publish"]["allow"]
        assert "rmos.runs.v1.events.*" not in printed["publish"]["allow"]

    def test_config_snippet(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["permissions", "explainer"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("# rmos-runs permissions explainer: subject prefix rmos.runs")
        assert role_permissions("explainer", DEFAULT).server_config() in out

    def test_bad_use_is_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["permissions", "operator", "--source", "engine-a"]) == 2
        assert "engine role only" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exited:
            cli.main(["permissions", "admin"])
        assert exited.value.code == 2


def readme_config() -> str:
    """The nats-server configuration of README's "Roles and a secured server"."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Roles and a secured server\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```\n", 1)[1].split("\n```", 1)[0]


class TestReadme:
    @pytest.mark.parametrize(
        ("name", "role", "source"),
        [
            ("worker", "worker", None),
            ("engine-a", "engine", "engine-a"),
            ("explainer", "explainer", None),
            ("operator", "operator", None),
        ],
    )
    def test_example_is_what_the_command_prints(
        self, name: str, role: Role, source: str | None
    ) -> None:
        """The example's users have exactly the printed permissions (it is not left behind
        when a role changes); tests/integration/test_permissions.py has nats-server load it."""
        config = readme_config()
        entry = config.split(f"{{ user: {name}, ", 1)[1].split("\n    }", 1)[0]
        assert role_permissions(role, DEFAULT, source).server_config("      ") in entry
        narrowed = f" --source {source}" if source else ""
        assert f"# rmos-runs permissions {role}{narrowed}\n" in entry
