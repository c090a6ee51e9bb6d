"""rmos-runs: the run-artifact ingestion worker, its client, API and command line."""

from importlib import metadata

try:
    __version__ = metadata.version("rmos-runs")
except metadata.PackageNotFoundError:  # run from a tree that is not installed
    __version__ = "unknown"
