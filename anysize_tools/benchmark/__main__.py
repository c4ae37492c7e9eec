"""`python -m anysize_tools.benchmark`: the benchmark's command."""

import sys

from .cli import main

sys.exit(main())
