"""The C library's functions that Python's ``os`` lacks (``syncfs``, ``syscall``), via ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util


def libc_function(name: str) -> ctypes._NamedFuncPointer | None:
    """``name`` from the C library, setting ``errno`` for ``ctypes.get_errno``; None where the
    library or the function is missing (another OS, an old C library)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        fn: ctypes._NamedFuncPointer = getattr(ctypes.CDLL(library, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    return fn
