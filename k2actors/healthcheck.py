"""The container health check: exit 0 while /health answers 200, else 1.

Standard library only (the slim image has no curl). Port and address are K2_METRICS_PORT and
K2_METRICS_BIND_ADDRESS, the variables that move the service's own endpoint, or their defaults.
"""

import os
import sys
import urllib.request

from k2actors.config import MetricsConfig


def main() -> int:
    port = os.environ.get("K2_METRICS_PORT", str(MetricsConfig().port))
    address = os.environ.get("K2_METRICS_BIND_ADDRESS", MetricsConfig().bind_address)
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(address, f"[{address}]" if ":" in address else address)
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # refused, timed out, or an HTTP error status such as 503
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
