"""The image's HEALTHCHECK: ``GET /health`` on the container's own port (``GATEWAY_PORT``,
default 3000). Exit 0 when the gateway answers 200 ``"healthy"``, else 1.

Standard library only: the runtime image has no curl. Proxy variables are ignored (an
``HTTP_PROXY`` in the container's environment must not send the check elsewhere). Liveness
only, as ``/health`` is: whether the backend or Redis is reachable is ``/health/ready``'s
question, which a load balancer or Kubernetes asks, and an unreachable backend is no reason
to restart the gateway.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("GATEWAY_PORT", "").strip() or "3000"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            healthy = answer.status == 200 and json.load(answer).get("status") == "healthy"
    except (OSError, ValueError):
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
