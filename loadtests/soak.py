#!/usr/bin/env python3
"""Soak: a long, bounded load of mixed sizes with a share of hostile inputs, watching the workers' memory.

    make soak                                       # 10 minutes, 4 users, 10 % hostile requests, demo-fcn
    python loadtests/soak.py --duration 10m --users 4 --bad-share 0.1

Starts its own TorchServe (the shipped demo model, free loopback ports, token authorization on), runs the Locust
load test (loadtests/loadtest.py, workload `mixed`) where each request is, with probability --bad-share, a case of
the hostile corpus (anysize_tools/hostile_corpus.py) that must get its documented answer, and samples every worker's
and the frontend's resident memory every few seconds. Writes loadtests/results/soak-<timestamp>/: the Locust
report, memory.csv (the samples), memory.json (the figures computed from them), memory.png and a memory section in
summary.md.

Exits non-zero on any unexpected answer (a failure in Locust's terms), on a worker restart, or when the workers'
memory keeps growing: the mean of the last quarter of the run more than --growth-limit above the second quarter's.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import psutil

from anysize_tools.archive import build, demo_spec
from anysize_tools.load_report import MEMORY_CSV, memory_figures, read_memory, write_report
from anysize_tools.loadtest import RESULTS, run_load_test
from anysize_tools.torchserve import TorchServe

SAMPLE_SECONDS = 5


def seconds(duration: str) -> int:
    """Locust-style durations: 90, 90s, 10m, 1h30m."""
    parts = re.findall(r"(\d+)([hms]?)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise argparse.ArgumentTypeError(f"not a duration: {duration!r}")
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)


def sample_memory(server: TorchServe, model: str, rows: List[Dict], stop: threading.Event) -> None:
    started = time.monotonic()
    frontend = psutil.Process(server.process.pid)
    while not stop.wait(SAMPLE_SECONDS):
        row = {"seconds": round(time.monotonic() - started, 1)}
        try:
            java = [child for child in frontend.children(recursive=True) if "java" in child.name()]
            row["frontend_mb"] = sum(p.memory_info().rss for p in java) / 2**20
            for worker in server.workers(model):
                row[f"worker_{worker['pid']}_mb"] = psutil.Process(int(worker["pid"])).memory_info().rss / 2**20
        except (psutil.Error, OSError, ValueError) as error:  # a worker restarting between two calls
            row["note"] = str(error)[:80]
        rows.append(row)


def memory_plot(rows: List[Dict], run_dir: Path) -> None:
    """memory.csv and memory.png beside the Locust report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = sorted({key for row in rows for key in row if key.endswith("_mb")})
    with open(run_dir / MEMORY_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["seconds", *columns, "note"])
        writer.writeheader()
        writer.writerows(rows)
    figure, axis = plt.subplots(figsize=(9, 4))
    for column in columns:
        points = [(row["seconds"], row[column]) for row in rows if column in row]
        axis.plot([p[0] for p in points], [p[1] for p in points], label=column.replace("_mb", ""))
    axis.set_xlabel("seconds since start")
    axis.set_ylabel("resident memory (MiB)")
    axis.set_title("Memory during the soak")
    axis.legend()
    figure.tight_layout()
    figure.savefig(run_dir / "memory.png", dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="10m", type=str)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--bad-share", type=float, default=0.1, help="share of requests from the hostile corpus")
    parser.add_argument("--head", choices=("adaptive", "fcn"), default="fcn")
    parser.add_argument("--growth-limit", type=float, default=0.10)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    seconds(args.duration)  # refuse a malformed duration before building anything

    run_dir = args.output or RESULTS / time.strftime("soak-%Y%m%d-%H%M%S")
    model = f"demo-{args.head}"
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        store = Path(scratch) / "store"
        build(demo_spec(args.head, store))  # named demo-HEAD, as `model`
        # Keys expire after token_expiration_min (60 in config.properties) and Locust reads them once: a longer
        # soak gets keys that outlive it.
        expiry = str(max(60, seconds(args.duration) // 60 + 10))
        server = TorchServe(Path(scratch) / "server", store, [f"{model}={model}.mar"], free_ports=True,
                            overrides={"token_expiration_min": expiry}).start()
        stop = threading.Event()
        try:
            server.wait_ready([model])
            sampler = threading.Thread(target=sample_memory, args=(server, model, rows, stop), daemon=True)
            sampler.start()
            print(f"[soak] {args.users} users, {100 * args.bad_share:.0f} % hostile, for {args.duration} -> {run_dir}",
                  flush=True)
            status, _ = run_load_test(server.url("inference"), model, "mixed", args.users, args.users,
                                      args.duration, run_dir, server.workdir / "key_file.json",
                                      extra={"bad_share": args.bad_share, "growth_limit": args.growth_limit},
                                      locust_args=["--bad-share", str(args.bad_share)])
        finally:
            stop.set()
            server.stop()
    memory_plot(rows, run_dir)
    figures = memory_figures(read_memory(run_dir / MEMORY_CSV), args.growth_limit)
    (run_dir / "memory.json").write_text(json.dumps(figures, indent=1) + "\n")
    write_report(run_dir)  # again, now with the memory section rendered from memory.csv
    memory_ok = figures["passed"]
    print((run_dir / "summary.md").read_text())
    ok = status == 0 and memory_ok
    print(f"[soak] {'PASSED' if ok else 'FAILED'}: report in {run_dir / 'summary.md'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
