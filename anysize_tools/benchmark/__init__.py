"""The fast-path benchmark (`loadtests/benchmark.py`, `make bench`, `make bench-sweep`), in modules:

- plan: the parts, the served configurations (`Served`), their weights and the plan for this machine.
- bare: bare-model timing (the handler's forward pass with no server) and the decoder comparison.
- served: served runs (an archive per configuration, ours or the stock handler's; warm-up; Locust; log breakdown),
  and the forms part's runs, every request form against one server.
- targets: issue 7's targets and their evaluation (`bare_share`, `best_run`, `targets`), and issue 16's on the
  request forms (`form_costs`, `form_targets`).
- render: the Markdown rendering of docs/benchmarks.md and docs/batching-sweep.md.
- cli: argument parsing and `main`.
"""

from .bare import bare_model
from .cli import main
from .served import STOCK_MODEL_FILE, log_breakdown

__all__ = ["main", "bare_model", "log_breakdown", "STOCK_MODEL_FILE"]
