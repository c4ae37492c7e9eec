#!/usr/bin/env python3
"""Time the README's test command as CI runs it: a fresh clone of a commit, `CI=true bash .ci/run` (install and
whole suite), several times in a row. Writes docs/test-runs.json (each run's outcome, pytest's summary line, the
install and test minutes), which the README's time claim quotes.

    .venv/bin/python scripts/research/fresh_clone_runs.py --runs 3        # about 9 minutes per run on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from anysize_tools.paths import DOCS, REPO

OUTPUT = DOCS / "test-runs.json"
INSTALL_DONE = "touch .venv/.installed"  # the Makefile's last install step, echoed by make before pytest starts


def one_run(commit: str, workdir: Path, log: Path) -> dict:
    clone = workdir / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", commit], check=True)
    started = time.monotonic()
    installed = None
    lines = []
    with subprocess.Popen(["bash", ".ci/run"], cwd=clone, env=dict(os.environ, CI="true"), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        with open(log, "w") as copy:
            for line in process.stdout:
                lines.append(line)
                copy.write(line)
                copy.flush()
                if installed is None and INSTALL_DONE in line:
                    installed = time.monotonic()
    total = time.monotonic() - started
    summary = next((line.strip("= \n") for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), "")
    shutil.rmtree(clone, ignore_errors=True)
    return {"exit_code": process.returncode, "pytest": summary, "total_minutes": round(total / 60, 2),
            "install_minutes": round((installed - started) / 60, 2) if installed else None,
            "test_minutes": round((total - (installed - started)) / 60, 2) if installed else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()),
                        help="folder for each run's full output (fresh-clone-run-N.log)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.commit], check=True, capture_output=True,
                            text=True).stdout.strip()
    runs = []
    with tempfile.TemporaryDirectory(prefix="fresh-clone-") as scratch:
        for index in range(args.runs):
            runs.append(one_run(commit, Path(scratch), args.logs / f"fresh-clone-run-{index + 1}.log"))
            print(json.dumps(runs[-1]), flush=True)
    OUTPUT.write_text(json.dumps({
        "command": " ".join(["python"] + sys.argv), "commit": commit,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "runs": runs,
        "all_passed": all(run["exit_code"] == 0 for run in runs),
        "slowest_total_minutes": max(run["total_minutes"] for run in runs),
        "slowest_test_minutes": max((run["test_minutes"] or 0) for run in runs),
    }, indent=1) + "\n")
    print(f"wrote {OUTPUT}", flush=True)
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
