"""``python -m worker.probe [PATH]``: the container's HEALTHCHECK (exit 0 healthy, 1 not).

GETs ``PATH`` (default ``/readyz``; ``/healthz`` for liveness) on this host's metrics port,
``RMOS_METRICS_PORT``, and prints the answer (``docker inspect`` shows it). Without a metrics
port there is nothing to probe and it passes: the image also runs the explainer and the client
commands. The standard library only: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

TIMEOUT_S = 3.0
ANY_ADDRESS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def url(env: Mapping[str, str], path: str) -> str | None:
    port = env.get("RMOS_METRICS_PORT", "").strip()
    if not port:
        return None
    host = env.get("RMOS_METRICS_HOST", "127.0.0.1").strip()
    host = ANY_ADDRESS.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def main(argv: Sequence[str] = sys.argv[1:], env: Mapping[str, str] = os.environ) -> int:
    target = url(env, argv[0] if argv else "/readyz")
    if target is None:
        print("no RMOS_METRICS_PORT: nothing to probe")
        return 0
    try:
        with urllib.request.urlopen(target, timeout=TIMEOUT_S) as response:
            print(response.read().decode(errors="replace").strip())
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503 and its reasons
        print(f"{exc.code}: {exc.read().decode(errors='replace').strip()}")
    except OSError as exc:  # refused, timed out
        print(f"{target}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
