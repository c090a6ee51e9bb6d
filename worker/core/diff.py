"""What differs between two runs (CONTRACT section 5, ``diff``). Pure functions: no I/O, no clock.

Paths are dot-joined keys and list indexes (``decision.warnings.0``); keys are not escaped, as the
contract's path syntax has none. Representation rules, chosen so that every difference shows:

* An empty dict or list below the root is a leaf holding itself (``{}`` or ``[]``), so ``[]``
  against ``[1]`` or against an absent value is still a difference.
* A subtree present on one side and absent on the other shows each leaf of the present side, with
  ``null`` on the other. Presence counts: an absent value differs from a stored ``null``, though
  both are shown as ``null``.
* When a path is a leaf on one side and holds a dict or list on the other (``5`` against
  ``{"x": 1}``, ``[]`` against ``[1]``), that path alone is reported, with the whole value of each
  side; none of the paths below it is, so no reported path is a parent of another.
* Values are compared as their canonical JSON compares: ``1`` equals ``1.0``, ``true`` is not ``1``.

``changes`` and ``changed_paths`` are in plain string order of the path (``x.10`` before ``x.2``).
"""

from __future__ import annotations

from typing import Any, Final

from worker.core.ingest import immutable_core

CRITICAL_PATHS: Final = (
    "status",
    "decision.risk_level",
    "hashes.toolpaths_sha256",
    "hashes.gcode_sha256",
)
WARNING_PATHS: Final = ("hashes.request_sha256", "hashes.feasibility_sha256", "decision.score")
IGNORED_KEYS: Final = frozenset(
    {"run_id", "event_id", "created_at_utc", "recorded_at_utc", "content_sha256"}
)
IGNORED_HASHES: Final = frozenset({"event_sha256"})

_ABSENT: Final = object()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of ``value`` by path, each path under ``prefix`` when one is given.

    An empty dict or list is a leaf holding itself, except ``value`` itself with no prefix: then it
    has no leaves (``flatten({}) == {}`` but ``flatten({}, "x") == {"x": {}}``). A scalar ``value``
    with no prefix is the single leaf ``""``.
    """
    leaves: dict[str, Any] = {}
    _walk(value, prefix or None, leaves, {})
    return leaves


def _children(value: Any) -> list[tuple[str, Any]] | None:
    """The ``(key, child)`` pairs of a dict or list, None for a scalar."""
    if isinstance(value, dict):
        return [(str(key), child) for key, child in value.items()]
    if isinstance(value, list):
        return [(str(index), child) for index, child in enumerate(value)]
    return None


def _walk(value: Any, path: str | None, leaves: dict[str, Any], inner: dict[str, Any]) -> None:
    """Record the leaves and inner (non-empty container) nodes of ``value``; None is the root."""
    children = _children(value)
    if children is None or (not children and path is not None):
        leaves["" if path is None else path] = value
        return
    if path is not None:
        inner[path] = value
    for key, child in children:
        _walk(child, key if path is None else f"{path}.{key}", leaves, inner)


def comparable_core(artifact: dict[str, Any]) -> dict[str, Any]:
    """The immutable core without the fields that differ between any two runs (ids, times)."""
    core = {k: v for k, v in immutable_core(artifact).items() if k not in IGNORED_KEYS}
    if isinstance(core.get("hashes"), dict):
        core["hashes"] = {k: v for k, v in core["hashes"].items() if k not in IGNORED_HASHES}
    return core


def same(x: Any, y: Any) -> bool:
    """Whether two JSON values are equal as canonical JSON: ``1 == 1.0`` but ``True != 1``."""
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(same(i, j) for i, j in zip(x, y, strict=True))
    if isinstance(x, bool) or isinstance(y, bool):
        return type(x) is type(y) and x == y
    return bool(x == y)


def _get(document: dict[str, Any], path: str) -> Any:
    """The value at a path of dict keys, or ``_ABSENT`` (unlike ``ingest.lookup``, null is kept)."""
    value: Any = document
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _ABSENT
        value = value[key]
    return value


def severity(core_a: dict[str, Any], core_b: dict[str, Any]) -> str:
    """``CRITICAL``, ``WARNING`` or ``INFO`` from the contract's paths that differ."""
    for level, paths in (("CRITICAL", CRITICAL_PATHS), ("WARNING", WARNING_PATHS)):
        if any(not same(_get(core_a, p), _get(core_b, p)) for p in paths):
            return level
    return "INFO"


def _below_any(path: str, parents: set[str]) -> bool:
    """Whether a strict dot-prefix of ``path`` is in ``parents``."""
    if not parents:
        return False
    parts = path.split(".")
    return any(".".join(parts[:i]) in parents for i in range(1, len(parts)))


def _shown(value: Any) -> Any:
    return None if value is _ABSENT else value


def diff_values(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Every differing path of two documents as ``{path, a, b}``, in path order."""
    leaves_a: dict[str, Any] = {}
    inner_a: dict[str, Any] = {}
    leaves_b: dict[str, Any] = {}
    inner_b: dict[str, Any] = {}
    _walk(a, None, leaves_a, inner_a)
    _walk(b, None, leaves_b, inner_b)
    # A leaf on one side that holds a container on the other is reported once, as a whole.
    collapsed = (leaves_a.keys() & inner_b.keys()) | (leaves_b.keys() & inner_a.keys())
    changes = []
    for path in sorted(leaves_a.keys() | leaves_b.keys()):
        if _below_any(path, collapsed):
            continue
        value_a = leaves_a.get(path, inner_a.get(path, _ABSENT))
        value_b = leaves_b.get(path, inner_b.get(path, _ABSENT))
        if not same(value_a, value_b):
            changes.append({"path": path, "a": _shown(value_a), "b": _shown(value_b)})
    return changes


def diff_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``{severity, changed_paths, changes}`` of run ``a`` against run ``b`` (CONTRACT section 5).

    Only the immutable core is compared, without ``run_id``, ``event_id``, ``created_at_utc``,
    ``recorded_at_utc``, ``content_sha256`` and ``hashes.event_sha256``.
    """
    core_a, core_b = comparable_core(a), comparable_core(b)
    changes = diff_values(core_a, core_b)
    return {
        "severity": severity(core_a, core_b),
        "changed_paths": [change["path"] for change in changes],
        "changes": changes,
    }
