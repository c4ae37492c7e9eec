#!/usr/bin/env python3
"""Two or more demo-model weight files side by side, under the archives' default settings, on held-out scenes of
seeds other than the resolution study's: what decides whether a training experiment replaces the shipped weights.

    .venv/bin/python scripts/research/compare_weights.py --weights model_store/demo/demo-vgg.pth OTHER.pth

For each seed, condition and weight file (keyed by its file name): top-1 accuracy of demo-fcn (score map maxed, each class's best view) and
demo-adaptive (the mean of each class's two best views) over the four scales and mirrors the archives declare
(model_store/demo/demo-vgg.serving.json), through the study's own evaluation (resolution_study.evaluate). The
conditions are where the study found misses (zoom at non-square shapes and 12 MP) and the canvas sizes a change
could hurt. Writes docs/weights-comparison.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from multiprocessing import Pool
from pathlib import Path

import torch

from anysize.scale_policy import parse_scales, view_sizes
from anysize.weights import read_state_dict
from anysize_tools.paths import DEMO, DOCS
from resolution_study import MAX_PIXELS, MIN_SIDE, UNIT, Scorer, evaluate, render_jpegs

CONDITIONS = (("zoom", "448x448", 448, 448, None), ("zoom", "1920x1080 (16:9)", 1920, 1080, None),
              ("zoom", "1080x1920 (9:16)", 1080, 1920, None), ("zoom", "224x448 (1:2)", 224, 448, None),
              ("zoom", "448x224 (2:1)", 448, 224, None), ("zoom", "4032x3024 (12 MP)", 4032, 3024, None),
              ("canvas", "448x448 (4x)", 448, 448, UNIT), ("canvas", "896x896 (8x)", 896, 896, UNIT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", type=Path, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[5, 7], help="not the study's (0) or its probe's (1)")
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--large-images", type=int, default=40, help="... above 2.5 MP")
    parser.add_argument("--output", type=Path, default=DOCS / "weights-comparison.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    serving = json.loads((DEMO / "demo-vgg.serving.json").read_text())
    scales = parse_scales(serving["scales"]["fcn"])
    rules = {"fcn-max": serving["view_aggregation"]["fcn"], "adaptive": serving["view_aggregation"]["adaptive"]}
    names = [path.name for path in args.weights]  # the keys (a path's slashes would not do in a docs-check selector)
    if len(set(names)) != len(names):
        parser.error("the weight files need distinct file names")
    scorers = {path.name: Scorer(read_state_dict(path)) for path in args.weights}
    multi = lambda w, h: view_sizes(w, h, "native", None, scales, MAX_PIXELS, MIN_SIDE)  # noqa: E731
    rows, started = [], time.perf_counter()
    with Pool(2) as pool:
        for seed in args.seeds:
            for mode, name, width, height, unit in CONDITIONS:
                count = args.large_images if width * height > 2_500_000 else args.images
                block = max(1, count // 8)
                jobs = [("scenes", seed, s, min(block, count - s), width, height, unit) for s in range(0, count, block)]
                bodies = [item for part in pool.map(render_jpegs, jobs) for item in part]
                row = {"seed": seed, "mode": mode, "condition": name, "images": count, "accuracy": {}}
                for path, scorer in scorers.items():
                    by_rule = evaluate(scorer, bodies, multi, flip=True)["accuracy_views"]
                    row["accuracy"][path] = {head: by_rule[rule][head] for head, rule in rules.items()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    totals = {path: {head: sum(round(r["accuracy"][path][head] * r["images"]) for r in rows) for head in rules}
              for path in scorers}
    results = {"weights": {path.name: str(path) for path in args.weights}, "seeds": args.seeds, "scales": list(scales), "view_aggregation": rules,
               "rows": rows, "right_in_all": totals, "pictures_in_all": sum(r["images"] for r in rows),
               "torch": torch.__version__, "machine": f"{platform.machine()} CPU",
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - started),
               "command": " ".join(["python"] + sys.argv)}
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"right in all: {json.dumps(totals)} of {results['pictures_in_all']}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
