#!/usr/bin/env python3
"""The compose stack under load, with one replica killed and restarted (figures for docs/deploy.md).

    python deploy/compose_failover.py [--users 16] [--kill-at 20] [--restart-at 45] [--duration 90]

Needs Docker, docker-compose (1.29 or the plugin) and the images (`make image`). Starts deploy/compose.yaml's two
replicas and HAProxy under its own project name with a fresh key, runs a closed-loop client on 127.0.0.1:8080
(every request's start, end and status recorded), SIGKILLs replica 1 at --kill-at seconds, starts it again at
--restart-at, and reports: how the requests spread over the replicas (HAProxy's per-server counts), the failed
requests and when they happened, how long until the survivor carried the load, and when the restarted replica was
back in rotation. Writes the raw timeline and the summary as JSON (--output).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from anysize_tools.auth import bearer
from anysize_tools.paths import DOCS, REPO
from anysize_tools.shapes import render_example

COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
PROJECT = "vggfailover"
LB = "http://127.0.0.1:8080"
STATS = "http://127.0.0.1:8404/stats;csv"


def say(message: str) -> None:
    print(f"[failover] {message}", flush=True)


def compose_command() -> list:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def compose(*args: str, env: dict) -> str:
    return subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "-p", PROJECT, *args], check=True,
                          capture_output=True, text=True, env=env).stdout


def container_id(service: str, env: dict) -> str:
    return compose("ps", "-q", service, env=env).strip()


def server_stats() -> dict:
    """HAProxy's view per replica: status and requests sent so far."""
    rows = csv.DictReader(io.StringIO(requests.get(STATS, timeout=5).text.lstrip("# ")))
    return {row["svname"]: {"status": row["status"], "requests": int(row["stot"] or 0)}
            for row in rows if row["pxname"] == "replicas" and row["svname"].startswith("serve-")}


def sample_body() -> bytes:
    picture, _ = render_example(3, "test", 0, 112, 112)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def load(stop: threading.Event, key: str, body: bytes, records: list, origin: float) -> None:
    session = requests.Session()
    headers = {**bearer(key), "Content-Type": "image/jpeg"}
    while not stop.is_set():
        started = time.monotonic()
        try:
            status = session.post(f"{LB}/predictions/demo-fcn", data=body, headers=headers, timeout=60).status_code
        except requests.RequestException as error:
            status = type(error).__name__
        records.append((started - origin, time.monotonic() - origin, status))


def per_second(records: list, duration: int) -> list:
    seconds = [{"ok": 0, "failed": 0} for _ in range(duration + 1)]
    for _, ended, status in records:
        second = min(int(ended), duration)
        seconds[second]["ok" if status == 200 else "failed"] += 1
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--kill-at", type=float, default=20)
    parser.add_argument("--restart-at", type=float, default=45)
    parser.add_argument("--duration", type=int, default=90)
    parser.add_argument("--output", type=Path, default=DOCS / "deploy-failover.json")
    args = parser.parse_args()
    key = secrets.token_hex(32)
    env = {**os.environ, "TS_INFERENCE_KEY": key}
    compose("up", "-d", "serve-1", "serve-2", "lb", env=env)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                stats = server_stats()
                if len(stats) == 2 and all(s["status"].startswith("UP") for s in stats.values()):
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the replicas never came up behind HAProxy")
            time.sleep(1)
        say(f"both replicas up behind HAProxy; {args.users} closed-loop users for {args.duration} s")
        body, records, stop = sample_body(), [], threading.Event()
        before = server_stats()
        origin = time.monotonic()
        threads = [threading.Thread(target=load, args=(stop, key, body, records, origin)) for _ in range(args.users)]
        for thread in threads:
            thread.start()
        events, statuses = {}, []
        victim = container_id("serve-1", env)
        while (now := time.monotonic() - origin) < args.duration:
            if "killed" not in events and now >= args.kill_at:
                subprocess.run(["docker", "kill", "--signal", "KILL", victim], check=True, capture_output=True)
                events["killed"] = now
                say(f"SIGKILL to serve-1 at {now:.1f} s")
            if "restarted" not in events and now >= args.restart_at:
                subprocess.run(["docker", "start", victim], check=True, capture_output=True)
                events["restarted"] = now
                say(f"serve-1 started again at {now:.1f} s")
            try:
                statuses.append((now, server_stats()))
            except requests.RequestException:
                pass
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        after = server_stats()
    finally:
        compose("down", "--timeout", "30", env=env)
    seconds = per_second(records, args.duration)
    failed = [(round(start, 2), round(end, 2), status) for start, end, status in records if status != 200]
    steady = [s["ok"] for s in seconds[2:int(args.kill_at)]]
    one_replica = [s["ok"] for s in seconds[int(args.kill_at) + 5:int(args.restart_at)]]
    # The survivor carries the load from the first second after the kill whose throughput reaches 80 % of the
    # one-replica level measured while the victim was down.
    level = statistics.median(one_replica) if one_replica else 0
    recovered = next((i for i in range(int(args.kill_at), int(args.restart_at)) if seconds[i]["ok"] >= 0.8 * level),
                     None)
    back = next((t for t, stats in statuses if t > events.get("restarted", 1e9)
                 and stats.get("serve-1", {}).get("status", "").startswith("UP")), None)
    summary = {
        "users": args.users, "duration_s": args.duration, "events_s": {k: round(v, 1) for k, v in events.items()},
        "requests": len(records), "ok": sum(1 for r in records if r[2] == 200), "failed": len(failed),
        "failed_requests": failed[:50],
        "requests_per_replica": {name: after[name]["requests"] - before[name]["requests"] for name in after},
        "steady_req_per_s_two_replicas": statistics.median(steady) if steady else None,
        "req_per_s_one_replica": level,
        "survivor_carries_load_after_s": None if recovered is None else round(recovered - events["killed"], 1),
        "restarted_replica_in_rotation_after_s": None if back is None else round(back - events["restarted"], 1),
        "failures_after_recovery": sum(1 for start, _, _ in failed if recovered and start > recovered + 1),
    }
    args.output.write_text(json.dumps({"summary": summary, "per_second": seconds}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
