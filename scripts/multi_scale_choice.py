#!/usr/bin/env python3
"""How the resolution study's multi-scale set was chosen: candidate sets of shorter sides (with and without flip)
against the single working view, on 100 held-out scenes and 100 probe pictures (seed 5, not the study's seeds) in
seven zoom and canvas conditions. Writes docs/multi-scale-choice.json; prints the mean per candidate and method.

    .venv/bin/python scripts/multi_scale_choice.py      # about 4 minutes on 2 cores
"""
import json
import platform
import sys
from datetime import datetime, timezone
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "handlers")]
import torch  # noqa: E402

import resolution_study as study  # noqa: E402
from scale_policy import view_sizes  # noqa: E402
from weights import read_state_dict  # noqa: E402

SEED, PICTURES, CHUNK = 5, 100, 25
WORKING = (112, 168)  # the single view's range, as the study derives it
CONDITIONS = [("zoom", "640x480", 640, 480, None), ("zoom", "224", 224, 224, None),
              ("zoom", "1920x1080", 1920, 1080, None), ("zoom", "56", 56, 56, None),
              ("canvas", "896", 896, 896, study.UNIT), ("canvas", "448", 448, 448, study.UNIT),
              ("canvas", "336", 336, 336, study.UNIT)]
CANDIDATES = [(), (112, 224), (168, 448), (112, 224, 448), (128, 256), (112, 168, 336), (168, 336)]


def planner(scales):
    """The sizes a picture is fed at: the candidate's scales, or the single working view for ()."""
    if scales:
        return lambda width, height: view_sizes(width, height, "native", None, scales, study.MAX_PIXELS,
                                                study.MIN_SIDE)
    return lambda width, height: view_sizes(width, height, "working", WORKING, (), study.MAX_PIXELS, study.MIN_SIDE)


def main() -> int:
    torch.set_num_threads(2)
    scorer = study.Scorer(read_state_dict(study.DEMO_WEIGHTS))
    results = {}
    with Pool(2) as pool:
        for mode, name, width, height, unit in CONDITIONS:
            pictures = []
            for source in ("probe", "scenes"):
                jobs = [(source, SEED, start, CHUNK, width, height, unit) for start in range(0, PICTURES, CHUNK)]
                pictures += [item for part in pool.map(study.render_jpegs, jobs) for item in part]
            for scales in CANDIDATES:
                for flip in ((False,) if not scales else (False, True)):
                    measured = study.evaluate(scorer, pictures, planner(scales), flip=flip)
                    results.setdefault(str((scales, flip)), {})[f"{mode} {name}"] = {
                        method: round(value, 3) for method, value in measured["accuracy"].items()}
            print(mode, name, {key: value[f"{mode} {name}"] for key, value in results.items()}, flush=True)
    (REPO / "docs" / "multi-scale-choice.json").write_text(json.dumps({
        "command": "python scripts/multi_scale_choice.py", "date": datetime.now(timezone.utc).date().isoformat(),
        "machine": f"{platform.machine()} CPU, 2 threads", "torch": torch.__version__, "weights": "demo-vgg.pth",
        "seed": SEED, "pictures_per_condition": {"scenes": PICTURES, "probe": PICTURES},
        "working_range_of_the_single_view": list(WORKING), "results": results}, indent=1) + "\n")
    for key, conditions in results.items():
        for method in ("adaptive", "fcn-mean", "fcn-max", "fcn-lse"):
            values = [condition[method] for condition in conditions.values()]
            print(key, method, round(sum(values) / len(values), 3), values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
