#!/usr/bin/env python3
"""Container health check: TorchServe's /ping through the container's nginx (no key needed); exit 0 when healthy."""

import sys
import urllib.request

try:
    with urllib.request.urlopen("http://127.0.0.1:8080/ping", timeout=4) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except Exception as error:  # refused, timed out, 5xx: all unhealthy
    print(f"unhealthy: {error}", file=sys.stderr)
    sys.exit(1)
