"""What is ours around prometheus-client: the metric set, the group's process metrics, the
exposition, and multiprocess mode as a group uses it (in fresh interpreters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT
from worker import metrics, multiproc

README = (ROOT / "README.md").read_text()


def ours() -> dict[str, Counter | Gauge | Histogram]:
    """The metrics worker.metrics defines, by exported name."""
    found: dict[str, Counter | Gauge | Histogram] = {}
    for item in vars(metrics).values():
        if isinstance(item, Counter | Gauge | Histogram) and not item._labelvalues:
            name = item._name + ("_total" if isinstance(item, Counter) else "")
            found[name] = item
    return found


class TestTheSet:
    def test_names_and_labels_of_before_are_kept(self) -> None:
        """README and CONTRACT document these: same names, same labels."""
        kept = {
            "rmos_events_total": ("outcome",),
            "rmos_group_commits_total": (),
            "rmos_dead_letters_total": ("code",),
            "rmos_explain_patches_total": ("outcome",),
            "rmos_explain_patches_ignored_total": (),
            "rmos_api_requests_total": ("op", "code"),
            "rmos_projection_lag_messages": (),
            "rmos_projection_lag_seconds": (),
            "rmos_store_outage": (),
            "rmos_store_retries_total": (),
        }
        found = ours()
        for name, labels in kept.items():
            assert found[name]._labelnames == labels, name

    def test_every_metric_has_a_readme_row(self) -> None:
        for name in ours():
            assert f"| `{name}` |" in README, name

    def test_every_gauge_is_in_a_preallocated_file(self) -> None:
        """Multiprocess files are allocated before use (a full disk must not SIGBUS): one
        per type, so every metric must be of those types and every gauge of that mode."""
        for name, metric in ours().items():
            assert metric._type in {"counter", "histogram", "gauge"}, name
            if isinstance(metric, Gauge):
                assert metric._multiprocess_mode == multiproc.GAUGE_MODE, name
        assert set(multiproc.FILES) == {"counter", "histogram", f"gauge_{multiproc.GAUGE_MODE}"}

    def test_bound_children_count_in_their_parent(self) -> None:
        before = metrics.value(metrics.EVENTS_DUPLICATE)
        metrics.EVENTS_DUPLICATE.inc()
        assert metrics.value(metrics.EVENTS_DUPLICATE) == before + 1
        assert metrics.value(metrics.EVENTS.labels("duplicate")) == before + 1

    def test_build_info(self) -> None:
        version = metrics.version()
        assert REGISTRY.get_sample_value("rmos_build_info", {"version": version}) == 1


class TestExposition:
    def test_text_by_default(self) -> None:
        body, content_type = metrics.exposition(REGISTRY, "")
        assert content_type.startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert {"rmos_events", "rmos_event_ack_latency_seconds", "process_cpu_seconds"} <= names
        assert not [line for line in body.decode().splitlines() if "_created" in line]

    def test_openmetrics_when_asked(self) -> None:
        body, content_type = metrics.exposition(REGISTRY, "application/openmetrics-text")
        assert content_type.startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")


def fake_proc(root: Path, pids: list[int]) -> None:
    """A /proc with the files ProcessCollector reads, for these pids."""
    root.mkdir()
    (root / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    for n, pid in enumerate(pids):
        (root / str(pid) / "fd").mkdir(parents=True)
        for fd in range(n + 3):
            (root / str(pid) / "fd" / str(fd)).touch()
        fields = ["S"] + ["0"] * 50
        fields[11], fields[12] = str(100 * (n + 1)), "0"  # utime, stime in ticks
        fields[19], fields[20], fields[21] = "500", "4096000", "100"  # start, vsize, rss pages
        (root / str(pid) / "stat").write_text(f"{pid} (python) " + " ".join(fields))
        (root / str(pid) / "limits").write_text(
            "Limit Soft Hard Units\nMax open files 1024 4096 files\n"
        )


class TestGroupProcesses:
    def test_one_series_per_process(self, tmp_path: Path) -> None:
        """The first process is ``process="0"``, the siblings 1, 2, ... in their order; a
        sibling gone from /proc has no series."""
        fake_proc(tmp_path / "proc", [os.getpid(), 4242])
        registry = CollectorRegistry()
        registry.register(metrics.GroupProcesses(lambda: [4242, 4343], proc=str(tmp_path / "proc")))
        ticks = os.sysconf("SC_CLK_TCK")
        get = registry.get_sample_value
        assert get("process_cpu_seconds_total", {"process": "0"}) == 100 / ticks
        assert get("process_cpu_seconds_total", {"process": "1"}) == 200 / ticks
        assert get("process_open_fds", {"process": "1"}) == 4
        assert get("process_max_fds", {"process": "0"}) == 1024
        assert get("process_virtual_memory_bytes", {"process": "2"}) is None
        families = {f.name: f for f in registry.collect()}
        assert families["process_cpu_seconds"].type == "counter"
        assert len(families["process_open_fds"].samples) == 2


GROUP_MEMBER = """
import json, os, sys
from pathlib import Path
from worker import multiproc
multiproc.allocate(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), os.getpid())
from worker import metrics
metrics.EVENTS_STORED.inc(int(sys.argv[1]))
metrics.STORE_OUTAGE.set(int(sys.argv[2]))
metrics.ACK_LATENCY.observe(0.003)
metrics.API_REQUESTS.labels("get", "ok").inc()
if sys.argv[3] == "serve":
    body, _ = metrics.exposition(metrics.serving_registry(lambda: []), "")
    print(body.decode())
else:
    print(os.getpid())
"""


def member(group: Path, stored: int, outage: int, serve: bool = False) -> str:
    env = {**os.environ, multiproc.ENV: str(group)}
    args = [str(stored), str(outage), "serve" if serve else "-"]
    done = subprocess.run(
        [sys.executable, "-c", GROUP_MEMBER, *args],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout


def samples(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, json.dumps(s.labels, sort_keys=True))] = s.value
    return out


def sample(found: dict[tuple[str, str], float], name: str, **labels: str) -> float | None:
    return found.get((name, json.dumps(labels, sort_keys=True)))


class TestMultiprocessMode:
    def test_the_first_serves_the_sums(self, tmp_path: Path) -> None:
        """Counters and histograms add up over the group; a gauge is the largest of the live
        processes'; a dead sibling's gauge goes and its counts stay."""
        group = tmp_path / "group"
        group.mkdir()
        sibling = int(member(group, stored=5, outage=1).split()[-1])
        found = samples(member(group, stored=2, outage=0, serve=True))
        assert sample(found, "rmos_events_total", outcome="stored") == 7
        assert sample(found, "rmos_api_requests_total", op="get", code="ok") == 2
        assert sample(found, "rmos_event_ack_latency_seconds_count") == 2
        assert sample(found, "rmos_event_ack_latency_seconds_bucket", le="0.005") == 2
        assert sample(found, "rmos_store_outage") == 1
        assert sample(found, "rmos_build_info", version=metrics.version()) == 1
        assert sample(found, "python_info", **_python_info(found)) == 1

        multiproc.process_dead(group, sibling)
        found = samples(member(group, stored=0, outage=0, serve=True))
        assert sample(found, "rmos_store_outage") == 0  # the dead one's 1 is gone
        assert sample(found, "rmos_events_total", outcome="stored") == 7  # its counts are not

    def test_files_are_allocated_whole(self, tmp_path: Path) -> None:
        group = tmp_path / "group"
        group.mkdir()
        pid = int(member(group, stored=1, outage=0).split()[-1])
        for prefix in multiproc.FILES:
            stat = (group / f"{prefix}_{pid}.db").stat()
            assert stat.st_size == multiproc.FILE_BYTES
            assert stat.st_blocks * 512 >= multiproc.FILE_BYTES  # allocated, not sparse


def _python_info(found: dict[tuple[str, str], float]) -> dict[str, str]:
    [labels] = [json.loads(key) for name, key in found if name == "python_info"]
    return dict(labels)


@pytest.fixture(autouse=True)
def _no_group_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(multiproc.ENV, raising=False)
