#!/usr/bin/env python3
"""Sequential end-to-end latency of the server `make serve` runs, per input size: a quick check, not a load test.

    .venv/bin/python loadtests/latency_probe.py --models demo-adaptive demo-fcn --sizes 112x112 640x480

Sends one random-noise JPEG per size, `--repeats` times per model, one request at a time, and prints the median.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from anysize_tools.auth import bearer, read_keys
from anysize_tools.paths import SERVE_DIR


def jpeg_of_size(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo-adaptive", "demo-fcn"])
    parser.add_argument("--sizes", nargs="+", default=["224x224", "640x480", "1024x768", "2048x1536"], help="WxH")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--key-file", default=str(SERVE_DIR / "key_file.json"))
    args = parser.parse_args()
    headers = {**bearer(read_keys(Path(args.key_file)).get("inference")), "Content-Type": "image/jpeg"}
    print("| input (WxH) | " + " | ".join(args.models) + " |\n|---|" + "---:|" * len(args.models))
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        body = jpeg_of_size(width, height)
        medians = []
        for model in args.models:
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                answer = requests.post(f"{args.url}/predictions/{model}", data=body, headers=headers, timeout=600)
                seconds.append(time.perf_counter() - started)
                answer.raise_for_status()
            medians.append(f"{statistics.median(seconds):.2f} s")
        print(f"| {size} | " + " | ".join(medians) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
