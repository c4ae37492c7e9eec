#!/usr/bin/env python3
"""A worker SIGKILLed under load, several times: which requests fail, how, and when the service answers again.

    make kill-worker                                 # 5 kills; writes docs/killed-worker.json
    python loadtests/kill_worker.py --runs 5 --out docs/killed-worker.json

Starts its own TorchServe with demo-fcn as the hardening test serves it (batchSize 4, maxBatchDelay 100 ms, each
image fed once at its own size), then for each run: three clients send back to back, the worker is killed, a fresh
client probes until the service answers again, and every client gets an answer sent after that
(anysize_tools/kill_worker.py, the same scenario `tests/test_hardening.py` asserts on). docs/reliability.md quotes
the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import requests

from anysize_tools.archive import build, demo_spec
from anysize_tools.hostile_corpus import picture, saved
from anysize_tools.kill_worker import kill_under_load, wait_for
from anysize_tools.loadtest import machine_description
from anysize_tools.paths import DOCS
from anysize_tools.torchserve import TorchServe

MODEL = "demo-fcn"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DOCS / "killed-worker.json")
    args = parser.parse_args()
    body = saved(picture(112, 112, 21), "PNG")
    runs = []
    with tempfile.TemporaryDirectory(prefix="kill-worker-") as scratch:
        store = Path(scratch) / "store"
        store.mkdir()
        build(demo_spec("fcn", store, batch_size=4, max_batch_delay=100, response_timeout=60,
                        handler={"scale_policy": "native", "scales": "", "flip": False}))
        server = TorchServe(Path(scratch) / "ts", store, [f"{MODEL}={MODEL}.mar"], free_ports=True).start()
        try:
            server.wait_ready([MODEL], timeout=300)
            url = f"{server.url('inference')}/predictions/{MODEL}"

            def post(timeout):
                return requests.post(url, data=body, timeout=timeout,
                                     headers={**server.headers("inference"), "Content-Type": "image/png"})

            for number in range(1, args.runs + 1):
                (worker,) = server.workers(MODEL)
                run = kill_under_load(post, int(worker["pid"]), clients=args.clients)
                summary = {"run": number, **run.summary()}
                print(f"[kill-worker] run {number}: {summary}", flush=True)
                runs.append(summary)
                # The next run starts from a READY replacement worker.
                wait_for(lambda: [w["status"] for w in server.workers(MODEL)] == ["READY"], 60, "a ready worker")
        finally:
            server.stop()
    import torch

    result = {"meta": {"machine": machine_description(), "torch": torch.__version__,
                       "torchserve": version("torchserve"), "date": time.strftime("%Y-%m-%d"),
                       "command": " ".join(["python loadtests/kill_worker.py", *sys.argv[1:]]),
                       "model": MODEL, "batch_size": 4, "max_batch_delay_ms": 100, "clients": args.clients},
              "runs": runs,
              "totals": {"runs": len(runs), "failed": sum(r["failed"] for r in runs),
                         "requests_after_kill": sum(r["requests_after_kill"] for r in runs),
                         "most_failed_in_a_run": max((r["failed"] for r in runs), default=0),
                         # None when any run never answered again: a missing recovery is no fast one
                         "slowest_recovery_s": None if any(r["answering_again_after_s"] is None for r in runs)
                         else max((r["answering_again_after_s"] for r in runs), default=None)}}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[kill-worker] wrote {args.out}", flush=True)
    return 0 if all(r["answering_again_after_s"] is not None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
