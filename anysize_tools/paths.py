"""Where things are in a checkout: the one home of the paths that commands, load tests and tests share.

The project is installed in editable mode (`pip install -e .`, what `make setup` runs), so this file stays in the
checkout and the repository root is its parent's parent.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HANDLERS = REPO / "handlers"
MODEL_STORE = REPO / "model_store"
DEMO = MODEL_STORE / "demo"
DOCS = REPO / "docs"
LOADTESTS = REPO / "loadtests"
SERVE_DIR = REPO / ".serve"
RESULTS = LOADTESTS / "results"  # load-test and benchmark runs (not committed)

if not (REPO / "pyproject.toml").is_file():  # a plain (non-editable) install would point REPO into site-packages
    raise ImportError(f"anysize_tools expects the checkout it is installed from in editable mode (pip install -e .); "
                      f"{REPO} holds no pyproject.toml")
