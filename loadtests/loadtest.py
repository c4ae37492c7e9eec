#!/usr/bin/env python3
"""A bounded headless Locust run against a running TorchServe, with its report (``anysize_tools.loadtest``).

    python loadtests/loadtest.py --model demo-fcn --workload mixed --users 4 --spawn-rate 2 --duration 30s
"""
import sys

from anysize_tools.loadtest import main

if __name__ == "__main__":
    sys.exit(main())
