#!/usr/bin/env python3
"""The fast-path benchmark: bare model, served runs, the stock handler, answer effects, the batching sweep
(``anysize_tools.benchmark``; `make bench`, `make bench-sweep`).

    python loadtests/benchmark.py                      # every default part; rewrites docs/benchmarks.{json,md}
    python loadtests/benchmark.py --render docs/benchmarks.json
"""
import sys

from anysize_tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
