#!/usr/bin/env python3
"""Build the default archives if needed, start TorchServe in the background and print a ready-to-paste request
(``anysize_tools.serve``).

    python scripts/serve.py            # what `make serve` runs
    python scripts/serve.py --stop     # what `make stop` runs
"""
import sys

from anysize_tools.serve import main

if __name__ == "__main__":
    sys.exit(main())
