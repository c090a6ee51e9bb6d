"""Tamper evidence against a real worker: every forgery of issue 11 is caught by ``verify`` and
by ``rmos-runs audit``, and an untouched store passes both, online and offline."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.canonical import canonical, derive_run_id
from contracts.transparency import (
    Checkpoint,
    consistency_valid,
    inclusion_valid,
    leaf_record,
    sign_checkpoint,
    signature_valid,
)
from tests.support import (
    BOTH_STORES,
    WorkerProcess,
    delete_stored,
    event,
    eventually,
    rewrite_stored,
    run_cli,
    stored,
    stored_artifacts,
    tamper,
)
from worker.client import RunsApiError, RunsClient
from worker.core.ingest import content_sha256
from worker.nats_server import NatsServer
from worker.signing import load_public
from worker.store.merkle_log import MerkleLog
from worker.store.revisions import created_entry

pytestmark = pytest.mark.integration
QUICK_CHECKPOINTS = {"RMOS_CHECKPOINT_INTERVAL_S": "0.3"}


@pytest.fixture
def store_env(store: str) -> dict[str, str]:
    """The store's environment (conftest's), and checkpoints signed often: a test waits for a
    checkpoint that covers its runs."""
    return {**({"RMOS_STORE": store} if store != "files" else {}), **QUICK_CHECKPOINTS}


def public_key(worker: WorkerProcess) -> Path:
    return worker.data_dir / "signing.key.pub"


async def publish(client: RunsClient, event_id: str, **fields: Any) -> dict[str, Any]:
    await client.publish_event(event(event_id, explain=False, **fields))
    return await stored(client, derive_run_id("engine-a", event_id))


async def blocked_run(client: RunsClient) -> dict[str, Any]:
    return await publish(
        client, "blocked", status="BLOCKED", decision={"risk_level": "RED", "score": 12}
    )


async def revised_run(client: RunsClient) -> dict[str, Any]:
    """A run at revision 3: two meta changes after its creation."""
    run = await publish(client, "revised")
    await client.patch_meta(run["run_id"], {"operator": "a"})
    await client.patch_meta(run["run_id"], {"operator": "b"})
    return await client.get(run["run_id"])


async def audit(worker: WorkerProcess, *args: str) -> tuple[int, dict[str, Any]]:
    env = {"RMOS_STORE": "jetstream"} if _jetstream(worker) else {}
    code, out = await run_cli(
        "audit", "--nats-url", str(worker.nats_url), "--data-dir", str(worker.data_dir),
        "--public-key", str(public_key(worker)), "--json", *args, env=env, timeout=120,
    )  # fmt: skip
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, out
    return code, json.loads(lines[-1])


async def cli_proof_checks(worker: WorkerProcess, run_id: str) -> dict[str, bool]:
    """``rmos-runs verify RUN_ID --public-key KEY``'s own checks of the worker's proof."""
    code, out = await run_cli(
        "verify", run_id, "--nats-url", str(worker.nats_url), "--public-key",
        str(public_key(worker)), "--json", env={}, timeout=30,
    )  # fmt: skip
    assert code == 0, out
    checks = json.loads(out.splitlines()[-1])["checks"]
    return {c["name"]: c["ok"] for c in checks if c["name"].startswith("proof.")}


def _jetstream(worker: WorkerProcess) -> bool:
    return worker.env.get("RMOS_STORE") == "jetstream"


def kinds(summary: dict[str, Any], run_id: str | None = None) -> set[str]:
    return {f["kind"] for f in summary["findings"] if run_id is None or f["run_id"] == run_id}


async def covering(client: RunsClient, size: int) -> Checkpoint:
    """The latest checkpoint once it covers ``size`` leaves."""

    async def probe() -> Checkpoint | None:
        checkpoint = await client.log_checkpoint()
        return checkpoint if checkpoint.tree_size >= size else None

    return await eventually(probe, timeout=20)


def forge_decision(data: bytes) -> bytes:
    """The forgery of issue 11: a BLOCKED, RED run rewritten OK and GREEN, with its content
    hash recomputed by the contract's own rule."""
    artifact = json.loads(data)
    artifact["status"] = "OK"
    artifact["decision"]["risk_level"] = "GREEN"
    artifact["content_sha256"] = content_sha256(artifact)
    return canonical(artifact)


def history_file(worker: WorkerProcess, run_id: str) -> Path:
    return worker.data_dir / "history" / run_id[4:6] / f"{run_id}.jsonl"


@BOTH_STORES
class TestUntouched:
    async def test_verify_proves_and_audit_passes(
        self, worker: WorkerProcess, client: RunsClient
    ) -> None:
        """Every log check passes, the proof checks out against the signed checkpoint with
        only the public key, and the audit finds nothing."""
        runs = [await blocked_run(client), await revised_run(client)]
        public = load_public(public_key(worker)) if not _jetstream(worker) else None
        for run in runs:
            report = await client.verify(run["run_id"])
            assert report.valid, report
            names = {c.name for c in report.checks}
            assert {"log.revisions", "log.artifact", "log.history"} <= names
            assert report.log is not None
            assert report.log.leaf["revision"] == run["revision"]
            checkpoint = Checkpoint.model_validate(report.log.checkpoint)
            assert inclusion_valid(
                report.log.leaf, report.log.leaf_index, report.log.inclusion_proof, checkpoint
            )
            if public is not None:
                assert signature_valid(checkpoint, public)
                assert await cli_proof_checks(worker, run["run_id"]) == {
                    "proof.signature": True,
                    "proof.inclusion": True,
                }
        await covering(client, 4)  # 1 + 3 revisions
        code, summary = await audit(worker)
        assert code == 0, summary
        assert (summary["runs"], summary["revisions"], summary["leaves"]) == (2, 4, 4)
        assert summary["checkpoints"] >= 1

    async def test_forged_decision_caught(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Issue 11's forgery passes the content hash, but not the log: verify and audit fail."""
        run = await blocked_run(client)
        await covering(client, 1)
        await tamper(client, worker.data_dir, run["run_id"], forge_decision)
        forged = await client.get(run["run_id"])
        assert (forged["status"], forged["decision"]["risk_level"]) == ("OK", "GREEN")
        report = await client.verify(run["run_id"])
        assert report.valid is False
        assert [c.name for c in report.checks if not c.ok] == ["log.artifact"]
        code, summary = await audit(worker)
        assert code == 1
        assert kinds(summary, run["run_id"]) == {"run.rewritten"}

    async def test_deleted_run_caught(self, worker: WorkerProcess, client: RunsClient) -> None:
        """A run removed from the store is named by the audit."""
        kept, gone = await publish(client, "kept"), await publish(client, "gone")
        await covering(client, 2)
        if _jetstream(worker):
            kv = await client.js.key_value("RMOS_RUNS")
            await kv.delete(gone["run_id"])
        else:
            delete_stored(worker.data_dir, gone["run_id"])
        code, summary = await audit(worker)
        assert code == 1
        assert [(f["kind"], f["run_id"]) for f in summary["findings"]] == [
            ("run.deleted", gone["run_id"])
        ]
        assert kept["run_id"] != gone["run_id"]


class TestHistoryTampering:
    """The files store's history lines: deleted, reordered or rewritten."""

    async def test_deleted_line(self, worker: WorkerProcess, client: RunsClient) -> None:
        run = await revised_run(client)
        path = history_file(worker, run["run_id"])
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(lines[1])  # revision 2's line gone
        report = await client.verify(run["run_id"])
        assert [c.name for c in report.checks if not c.ok] == ["log.history"]
        code, summary = await audit(worker)
        assert code == 1
        assert kinds(summary, run["run_id"]) == {"history.missing"}

    async def test_reordered_lines(self, worker: WorkerProcess, client: RunsClient) -> None:
        run = await revised_run(client)
        path = history_file(worker, run["run_id"])
        first, second = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(second + first)
        code, summary = await audit(worker)
        assert code == 1
        assert kinds(summary, run["run_id"]) == {"history.reordered"}

    async def test_rewritten_line(self, worker: WorkerProcess, client: RunsClient) -> None:
        """A line appended for revision 2 shadows the logged one (readers take the last)."""
        run = await revised_run(client)
        path = history_file(worker, run["run_id"])
        entry = json.loads(path.read_bytes().splitlines()[0])
        entry["by"] = "someone else"
        with path.open("ab") as fh:
            fh.write(canonical(entry) + b"\n")
        history = await client.history(run["run_id"])
        assert history.revisions[1].by == "someone else"
        report = await client.verify(run["run_id"])
        assert [c.name for c in report.checks if not c.ok] == ["log.history"]
        code, summary = await audit(worker)
        assert code == 1
        assert kinds(summary, run["run_id"]) == {"history.rewritten"}


def rewrite_log(data_dir: Path, records: list[dict[str, Any]]) -> MerkleLog:
    """Replace the log in ``log.sqlite`` by a log of ``records`` (the runs' places kept), as
    someone with the data dir could."""
    with closing(sqlite3.connect(data_dir / "log.sqlite")) as db, db:
        db.execute("DELETE FROM leaves")
        db.execute("DELETE FROM nodes")
    forged = MerkleLog(data_dir / "log.sqlite")
    forged.open()
    forged.append(records)
    return forged


def log_records(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / "log.sqlite") as db:
        return [json.loads(r) for (r,) in db.execute("SELECT record FROM leaves ORDER BY idx")]


class TestLogTampering:
    """The log itself: truncated, or rewritten and signed again with another key."""

    async def test_truncated_log(self, worker: WorkerProcess, client: RunsClient) -> None:
        runs = [await publish(client, f"t{i}") for i in range(4)]
        await covering(client, 4)
        assert await worker.terminate() == 0
        records = log_records(worker.data_dir)
        rewrite_log(worker.data_dir, records[:2]).close()
        code, summary = await audit(worker)
        assert code == 1
        assert "log.truncated" in kinds(summary)
        unlogged = {f["run_id"] for f in summary["findings"] if f["kind"] == "run.unlogged"}
        assert unlogged == {r["run_id"] for r in runs[2:]}

    async def test_resigned_with_another_key(
        self, worker: WorkerProcess, client: RunsClient
    ) -> None:
        """A forger rewrites the artifact, rebuilds the log around it and publishes a
        checkpoint signed with a key of their own: the real key's checkpoints expose it."""
        run = await blocked_run(client)
        await publish(client, "other")
        real = await covering(client, 2)
        assert await worker.terminate() == 0
        await tamper(client, worker.data_dir, run["run_id"], forge_decision)
        forged_artifact = await read_artifact(worker, run["run_id"])
        records = log_records(worker.data_dir)
        records[0] = leaf_record(forged_artifact, created_entry(forged_artifact))
        forged_log = rewrite_log(worker.data_dir, records)
        size, root = forged_log.head()
        forged_log.close()
        key = Ed25519PrivateKey.generate()
        fake = sign_checkpoint(
            key, origin=real.origin, tree_size=size, root=root, issued_at=real.issued_at
        )
        await client.js.publish(client.subjects.checkpoints, canonical(fake.as_dict()))
        code, summary = await audit(worker)
        assert code == 1
        assert {"checkpoint.signature", "log.rewritten"} <= kinds(summary)
        assert "run.rewritten" not in kinds(summary)  # the forged log agrees with the forgery


async def read_artifact(worker: WorkerProcess, run_id: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(stored_artifacts(worker.data_dir)[run_id])
    return document


class TestOffline:
    async def test_copy_and_saved_checkpoint(
        self, worker: WorkerProcess, client: RunsClient, tmp_path: Path
    ) -> None:
        """A copy of the data dir, a checkpoint saved with ``rmos-runs checkpoint`` and the
        public key are all an offline audit needs; a forgery in the copy is caught."""
        run = await blocked_run(client)
        await revised_run(client)
        await covering(client, 4)
        code, out = await run_cli(
            "checkpoint", "--nats-url", str(worker.nats_url), "--public-key",
            str(public_key(worker)), env={}, timeout=30,
        )  # fmt: skip
        assert code == 0, out
        saved = tmp_path / "checkpoint.json"
        saved.write_text(out.splitlines()[-1])
        copy = tmp_path / "copy"
        shutil.copytree(worker.data_dir, copy)
        pub = tmp_path / "key.pub"
        shutil.copy(public_key(worker), pub)
        offline = ("audit", "--offline", "--data-dir", str(copy), "--checkpoint", str(saved))
        code, out = await run_cli(*offline, "--public-key", str(pub), env={}, timeout=60)
        assert code == 0, out
        assert "audit: 2 runs, 4 revisions, 4 leaves, 1 checkpoints: no findings" in out
        rewrite_stored(copy, run["run_id"], forge_decision(stored_artifacts(copy)[run["run_id"]]))
        code, out = await run_cli(*offline, "--public-key", str(pub), env={}, timeout=60)
        assert code == 1, out
        assert f"run.rewritten {run['run_id']}" in out
        code, out = await run_cli(*offline, env={}, timeout=60)  # no key: refused
        assert code == 2, out
        assert "--public-key" in out

    async def test_checkpoint_since(
        self, worker: WorkerProcess, client: RunsClient, tmp_path: Path
    ) -> None:
        """``rmos-runs checkpoint --since`` proves the log extends a saved checkpoint, and
        says so when it does not."""
        await publish(client, "a")
        first = await covering(client, 1)
        saved = tmp_path / "first.json"
        saved.write_bytes(canonical(first.as_dict()))
        await publish(client, "b")
        await covering(client, 2)
        args = ("checkpoint", "--nats-url", str(worker.nats_url), "--since", str(saved))
        code, out = await run_cli(*args, env={}, timeout=30)
        assert code == 0, out
        bogus = first.model_copy(update={"root_hash": "0" * 64})
        saved.write_bytes(canonical(bogus.as_dict()))
        code, out = await run_cli(*args, env={}, timeout=30)
        assert code == 1, out
        assert "does not extend checkpoint 1" in out


@BOTH_STORES
class TestLogApi:
    async def test_consistency_and_leaves(self, worker: WorkerProcess, client: RunsClient) -> None:
        """Consistency proofs between two checkpoints verify; leaves come back in order;
        requests beyond the log are refused."""
        await publish(client, "a")
        old = await covering(client, 1)
        for name in "bcd":
            await publish(client, name)
        new = await covering(client, 4)
        proof = await client.log_consistency(old.tree_size, new.tree_size)
        assert consistency_valid(old, new, proof.proof)
        assert (proof.first_root, proof.second_root) == (old.root_hash, new.root_hash)
        page = await client.log_leaves(0)
        assert [leaf.index for leaf in page.leaves] == list(range(new.tree_size))
        assert {leaf.leaf["revision"] for leaf in page.leaves} == {1}
        for bad in ({"first": 5, "second": 2}, {"first": 0, "second": new.tree_size + 50}):
            with pytest.raises(RunsApiError) as info:
                await client.request("log.consistency", bad)
            assert info.value.code == "INVALID_REQUEST"
        with pytest.raises(RunsApiError) as info:
            await client.request("log.leaves", {"start": 0, "end": 5000})
        assert info.value.code == "INVALID_REQUEST"


def _remove_log_file(data: Path) -> None:
    for name in ("log.sqlite", "log.sqlite-wal", "log.sqlite-shm"):
        (data / name).unlink(missing_ok=True)


def _before_the_log(data: Path) -> None:
    """Turn a files data dir into one of the versions before the log: a file a run
    (``runs/<xx>/<run_id>.json``), no segments, no ``log.sqlite``."""
    for run_id, artifact in stored_artifacts(data).items():
        path = data / "runs" / run_id[4:6] / f"{run_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(artifact)
    shutil.rmtree(data / "segments")
    _remove_log_file(data)


class TestUpgrade:
    """A data dir written before the log existed, and a log emptied behind the worker's back."""

    @BOTH_STORES
    async def test_older_store_adopted(
        self, nats_server: NatsServer, client: RunsClient, tmp_path: Path, store_env: dict[str, str]
    ) -> None:
        """Runs stored before the log are logged as they stand at the first start; verify and
        the audit accept them; new runs are logged from their creation."""
        data = tmp_path / "data"
        env = store_env
        first = WorkerProcess(nats_server.url, data, env=env)
        await first.start(client)
        old = await blocked_run(client)
        revised = await revised_run(client)
        assert await first.terminate() == 0
        if "RMOS_STORE" in store_env:
            _remove_log_file(data)
            await client.js.delete_stream("RMOS_LOG")  # as a jetstream store of that version
        else:
            _before_the_log(data)
        await client.js.purge_stream(client.subjects.checkpoints_stream)  # and no checkpoints
        second = WorkerProcess(nats_server.url, data, env=env)
        await second.start(client)
        assert "2 runs stored before it are logged as they stand now" in second.log(), second.log()
        for run in (old, revised):
            assert (await client.verify(run["run_id"])).valid
        new = await publish(client, "new")
        await covering(client, 3)
        code, summary = await audit(second)
        assert code == 0, summary
        assert (summary["runs"], summary["leaves"]) == (3, 3)
        leaves = (await client.log_leaves(0)).leaves
        changes = {leaf.leaf["run_id"]: leaf.leaf["change"] for leaf in leaves}
        assert changes == {
            old["run_id"]: "created",
            revised["run_id"]: "adopted",
            new["run_id"]: "created",
        }
        assert await second.terminate() == 0

    async def test_removed_log_not_rebuilt(
        self, worker: WorkerProcess, client: RunsClient, nats_server: NatsServer
    ) -> None:
        """With checkpoints published, an empty log is a loss: the worker says so and does
        not make a new one look whole; the audit names the runs it misses."""
        run = await publish(client, "a")
        await covering(client, 1)
        assert await worker.terminate() == 0
        rewrite_log(worker.data_dir, []).close()
        await worker.start(client)
        assert "the Merkle log is empty but signed checkpoints of it exist" in worker.log()
        assert not (await client.verify(run["run_id"])).valid
        code, summary = await audit(worker)
        assert code == 1
        assert {"log.truncated", "run.unlogged"} <= kinds(summary)


class TestJetStreamHistoryTampering:
    @pytest.mark.parametrize("store", ["jetstream"], indirect=True)
    async def test_history_entry_replaced(self, worker: WorkerProcess, client: RunsClient) -> None:
        """With write access to the buckets, a forged history entry put in the chain (the
        artifact's value written again naming it): served by ``history``, caught by verify and
        the audit."""
        run = await revised_run(client)
        run_id = run["run_id"]
        value = await client.js.get_msg("KV_RMOS_RUNS", subject=f"$KV.RMOS_RUNS.{run_id}")
        assert value.data is not None
        assert value.headers is not None
        newest = await client.js.get_msg(
            "RMOS_RUN_HISTORY", seq=int(value.headers["Rmos-History-Seq"])
        )
        assert newest.data is not None
        assert newest.headers is not None
        entry = json.loads(newest.data)
        entry["by"] = "someone else"
        forged = await client.js.publish(
            f"{client.subjects.root}.store.history.{run_id}",
            canonical(entry),
            headers={"Rmos-Prev-Seq": newest.headers["Rmos-Prev-Seq"]},
        )
        await client.js.publish(
            f"$KV.RMOS_RUNS.{run_id}", value.data, headers={"Rmos-History-Seq": str(forged.seq)}
        )
        assert (await client.history(run_id)).revisions[2].by == "someone else"
        report = await client.verify(run_id)
        assert [c.name for c in report.checks if not c.ok] == ["log.history"]
        await covering(client, 3)
        code, summary = await audit(worker)
        assert code == 1
        assert kinds(summary, run_id) == {"history.missing"}
