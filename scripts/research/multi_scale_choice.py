#!/usr/bin/env python3
"""How the resolution study's multi-scale views were chosen, and what else was tried: candidate sets of shorter
sides (with and without mirrors, with and without a view at the picture's own size capped at 1 MP), their
probabilities combined over views by the mean (the VGG paper's, what the service does) or the maximum, against
the single working view. 100 held-out scenes and 100 probe pictures per condition (seed 5, not the study's seeds)
in seven zoom and canvas conditions. Writes docs/multi-scale-choice.json; prints the mean and the worst condition
per candidate and method.

    .venv/bin/python scripts/research/multi_scale_choice.py      # about 15 minutes on 2 cores
"""
import json
import platform
import sys
from datetime import datetime, timezone
from multiprocessing import Pool

import resolution_study as study
import torch

from anysize.scale_policy import combine_views, view_sizes
from anysize.weights import read_state_dict
from anysize_tools.paths import DOCS

SEED, PICTURES, CHUNK = 5, 100, 25
WORKING = (112, 168)  # the single view's range, as the study derives it
OWN_SIZE_CAP = 1_048_576  # pixels of the optional view at the picture's own size
CONDITIONS = [("zoom", "640x480", 640, 480, None), ("zoom", "224", 224, 224, None),
              ("zoom", "1920x1080", 1920, 1080, None), ("zoom", "56", 56, 56, None),
              ("canvas", "896", 896, 896, study.UNIT), ("canvas", "448", 448, 448, study.UNIT),
              ("canvas", "336", 336, 336, study.UNIT)]
# (scales, flip, own size): () is the single working view
CANDIDATES = [((), False, False), ((112, 224), False, False), ((112, 224), True, False), ((168, 448), True, False),
              ((112, 224, 448), False, False), ((112, 224, 448), True, False), ((128, 256), True, False),
              ((112, 168, 336), True, False), ((168, 336), True, False), ((112, 224, 448, 672), True, False),
              ((112, 224, 448), True, True)]
COMBINATIONS = ("mean", "max")


def planner(scales, own_size):
    """The sizes a picture is fed at: the candidate's scales (plus its own size, at most OWN_SIZE_CAP pixels,
    when that is larger than every scale), or the single working view for ()."""
    def sizes(width, height):
        if not scales:
            return view_sizes(width, height, "working", WORKING, (), study.MAX_PIXELS, study.MIN_SIDE)
        planned = view_sizes(width, height, "native", None, scales, study.MAX_PIXELS, study.MIN_SIDE)
        if own_size and min(width, height) > max(scales):
            planned.append(study.own_size(width, height, OWN_SIZE_CAP))
        return planned
    return sizes


def render_pictures(pool, seed, count, chunk, width, height, unit):
    """``count`` probe pictures then ``count`` held-out scenes of one condition, as (JPEG, label) pairs, and their
    labels as a tensor; rendered in ``pool``."""
    pictures = []
    for source in ("probe", "scenes"):
        jobs = [(source, seed, start, chunk, width, height, unit) for start in range(0, count, chunk)]
        pictures += [item for part in pool.map(study.render_jpegs, jobs) for item in part]
    return pictures, torch.tensor([label for _, label in pictures])


@torch.inference_mode()
def view_probabilities(scorer, pictures, sizes_for, flip):
    """{method: (pictures, views, classes)} soft-max outputs of every view (and mirror) of every picture."""
    views = [study.views_and_mirrors(body, sizes_for, flip) for body, _ in pictures]
    out = {}
    for position in range(len(views[0])):  # every picture of a condition has the same views
        group = [picture_views[position] for picture_views in views]
        per_pass = scorer.images_per_pass(*group[0].shape[:2])
        for start in range(0, len(group), per_pass):
            for method, rows in scorer.probabilities(torch.stack(group[start:start + per_pass])).items():
                out.setdefault(method, [[] for _ in views])
                for offset, row in enumerate(rows):
                    out[method][start + offset].append(row)
    return {method: torch.stack([torch.stack(rows) for rows in per_picture]) for method, per_picture in out.items()}


def main() -> int:
    torch.set_num_threads(2)
    scorer = study.Scorer(read_state_dict(study.DEMO_WEIGHTS))
    results = {}
    with Pool(2) as pool:
        for mode, name, width, height, unit in CONDITIONS:
            pictures, labels = render_pictures(pool, SEED, PICTURES, CHUNK, width, height, unit)
            for scales, flip, own_size in CANDIDATES:
                probabilities = view_probabilities(scorer, pictures, planner(scales, own_size), flip)
                for combination in COMBINATIONS if scales else ("mean",):
                    key = f"scales={','.join(map(str, scales)) or 'working'} flip={flip} own_size={own_size} " \
                          f"views={combination}"
                    results.setdefault(key, {})[f"{mode} {name}"] = {
                        method: round(float((combine(rows, combination).argmax(1) == labels).float().mean()), 3)
                        for method, rows in probabilities.items()}
            print(mode, name, flush=True)
    (DOCS / "multi-scale-choice.json").write_text(json.dumps({
        "command": "python scripts/research/multi_scale_choice.py", "date": datetime.now(timezone.utc).date().isoformat(),
        "machine": f"{platform.machine()} CPU, 2 threads", "torch": torch.__version__, "weights": "demo-vgg.pth",
        "seed": SEED, "pictures_per_condition": {"scenes": PICTURES, "probe": PICTURES},
        "working_range_of_the_single_view": list(WORKING), "own_size_cap": OWN_SIZE_CAP, "results": results},
        indent=1) + "\n")
    for key, conditions in results.items():
        for method in ("adaptive", "fcn-mean", "fcn-max", "fcn-lse"):
            for mode in ("zoom", "canvas"):
                values = [row[method] for condition, row in conditions.items() if condition.startswith(mode)]
                print(f"{key} {method} {mode}: mean {sum(values) / len(values):.3f} worst {min(values):.3f}")
    return 0


def combine(rows: torch.Tensor, how: str) -> torch.Tensor:
    """(pictures, views, classes) -> (pictures, classes): each picture's views combined as the service combines
    them (scale_policy.combine_views: ``how`` is one of its VIEW_AGGREGATIONS)."""
    return torch.stack([combine_views(views, how) for views in rows])


if __name__ == "__main__":
    sys.exit(main())
