#!/usr/bin/env python3
"""Run a bounded, headless Locust load test against a running TorchServe and write a complete report.

    python loadtests/loadtest.py --model demo-fcn --workload mixed --users 4 --spawn-rate 2 --duration 30s
    make loadtest MODEL=demo-fcn PROFILE=mixed USERS=4 SPAWN_RATE=2 DURATION=30s [PROCESSES=4]

Writes loadtests/results/<timestamp>/: Locust's CSV files and HTML report, run.json (the parameters), summary.md
and PNG plots (anysize_tools/load_report.py). Exits non-zero when any request failed or none was made. With --processes N,
Locust runs one master and N worker processes on this machine (its distributed mode; see loadtests/README.md for
workers on other machines). The target is the server `make serve` started, unless --host and --key-file say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import requests

from .load_report import write_report
from .paths import LOADTESTS, REPO, RESULTS, SERVE_DIR
from .auth import bearer, inference_key
from .torchserve import read_properties
from .workloads import DEFAULT_CACHE, PROFILES, ensure_images

LOCUSTFILE = LOADTESTS / "locustfile.py"
SERVE_KEY_FILE = SERVE_DIR / "key_file.json"


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def default_host() -> str:
    return read_properties(REPO / "config.properties")["inference_address"]


def server_answers(host: str, key_file: Path) -> bool:
    key = inference_key(key_file)
    headers = bearer(key)
    try:
        return requests.get(f"{host}/ping", headers=headers, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def locust_command(host: str, model: str, workload: str, users: int, spawn_rate: float, duration: str,
                   run_dir: Path, key_file: Path, processes: int, image_cache: Path) -> List[str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", duration, "--host", host,
               "--csv", str(run_dir / "locust"), "--csv-full-history", "--html", str(run_dir / "report.html"),
               "--only-summary", "--exit-code-on-error", "1",
               "--model", model, "--workload", workload, "--image-cache", str(image_cache),
               "--key-file", str(key_file)]
    if processes > 1:
        command += ["--processes", str(processes)]
    return command


def run_load_test(host: str, model: str, workload: str, users: int, spawn_rate: float, duration: str,
                  run_dir: Path, key_file: Path = SERVE_KEY_FILE, processes: int = 1,
                  image_cache: Path = DEFAULT_CACHE, extra: Optional[dict] = None,
                  locust_args: Tuple[str, ...] = ()) -> Tuple[int, Dict[str, Dict[str, float]]]:
    """Run Locust, write the report; return (exit status, totals per request name)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_images(workload, image_cache)  # before Locust starts, so its worker processes only read
    run = {"model": model, "workload": f"{workload} ({PROFILES[workload]})", "users": users,
           "spawn_rate": spawn_rate, "duration": duration, "locust_processes": processes, "host": host,
           "machine": machine_description(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **(extra or {})}
    (run_dir / "run.json").write_text(json.dumps(run, indent=1))
    command = locust_command(host, model, workload, users, spawn_rate, duration, run_dir, key_file, processes,
                             image_cache) + list(locust_args)
    with open(run_dir / "locust.log", "wb") as log:
        status = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL).returncode
    table = write_report(run_dir)
    aggregated = table.get("Aggregated", {})
    if status == 0 and (not aggregated.get("requests") or aggregated.get("failures")):
        status = 1  # no request completed counts as a failed run too
    return status, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo-fcn")
    parser.add_argument("--workload", choices=sorted(PROFILES), default="mixed")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--spawn-rate", type=float, default=2)
    parser.add_argument("--duration", default="30s", help="Locust run time, e.g. 30s, 2m")
    parser.add_argument("--processes", type=int, default=1, help="Locust worker processes (distributed mode)")
    parser.add_argument("--host", default=None, help="inference address (default: config.properties)")
    parser.add_argument("--key-file", type=Path, default=SERVE_KEY_FILE, help="TorchServe's key_file.json")
    parser.add_argument("--image-cache", type=Path, default=DEFAULT_CACHE, help="generated images (made if missing)")
    parser.add_argument("--output", type=Path, default=None, help="run directory (default: a new timestamp)")
    parser.add_argument("--request-form", default="raw", choices=("raw", "oip-json", "oip-binary", "instances"),
                        help="how the images travel (the locustfile's --request-form)")
    parser.add_argument("--images-per-request", type=int, default=1, help="for the oip-* and instances forms")
    args = parser.parse_args()

    host = (args.host or default_host()).rstrip("/")
    if not server_answers(host, args.key_file):
        print(f"[loadtest] no TorchServe answers at {host}/ping with the key in {args.key_file}; start one with "
              "`make serve`", file=sys.stderr)
        return 2
    run_dir = args.output or RESULTS / time.strftime("%Y%m%d-%H%M%S")
    print(f"[loadtest] {args.users} users on {args.model} ({args.workload}) for {args.duration} -> {run_dir}",
          flush=True)
    form = {"request_form": args.request_form, "images_per_request": args.images_per_request}
    status, table = run_load_test(host, args.model, args.workload, args.users, args.spawn_rate, args.duration,
                                  run_dir, args.key_file, args.processes, args.image_cache, extra=form,
                                  locust_args=("--request-form", args.request_form,
                                               "--images-per-request", str(args.images_per_request)))
    print((run_dir / "summary.md").read_text())
    print(f"[loadtest] report: {run_dir / 'summary.md'} (Locust's log: {run_dir / 'locust.log'})")
    if status != 0:
        print("[loadtest] FAILED: some requests failed or none completed; see the failures above and "
              f"{run_dir / 'locust.log'}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
