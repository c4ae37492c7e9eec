#!/usr/bin/env python3
"""How the views of multi-scale evaluation are combined: the rules tried, on pictures the resolution study never sees.

The study's views (shorter sides 112, 224, 448 and 672, each with its mirror) are classified once per picture; their
probabilities are then combined by each candidate rule: the mean (the VGG paper's), each class's best view (max),
the mean of each class's k best views (top2 .. top4), power means, the geometric mean, a confidence-weighted mean,
a vote, and each scale's view-and-mirror mean maxed over scales. 80 held-out scenes and 80 probe pictures per
condition (seed 5, not the study's seeds) in ten zoom and five canvas conditions. Writes
docs/view-aggregation-choice.json (accuracy per condition, rule and method, and each view's own accuracy, so the
reason a rule wins or loses can be read); prints the mean and the worst zoom and canvas condition per rule.

    .venv/bin/python scripts/research/view_aggregation_choice.py      # about 13 minutes on 2 cores
"""
import json
import platform
import sys
from datetime import datetime, timezone
from multiprocessing import Pool

import multi_scale_choice as choice
import resolution_study as study
import torch

from anysize.scale_policy import VIEW_AGGREGATIONS
from anysize.weights import read_state_dict
from anysize_tools.paths import DOCS

SEED, PICTURES, CHUNK = 5, 80, 20
SCALES = study.MULTI_SCALES
CONDITIONS = ([("zoom", f"{s}x{s}", s, s, None) for s in (48, 112, 224, 448, 896)]
              + [("zoom", f"{w}x{h}", w, h, None) for w, h in ((640, 480), (1920, 1080), (1080, 1920), (224, 448),
                                                               (448, 224))]
              + [("canvas", f"{s}x{s}", s, s, study.UNIT) for s in (336, 448, 672, 896)]
              + [("canvas", "896x504", 896, 504, study.UNIT)])


def pair_max(p: torch.Tensor) -> torch.Tensor:
    """Each scale's view and mirror averaged, then each class's best scale (views: scales, then their mirrors)."""
    half = p.shape[1] // 2
    return ((p[:, :half] + p[:, half:]) / 2).max(1).values


# (pictures, views, classes) -> (pictures, classes) scores; only the argmax matters here. The service's own rules
# (scale_policy.VIEW_AGGREGATIONS) through its own code; the others written out.
RULES = {
    **{how: (lambda how: lambda p: choice.combine(p, how))(how) for how in VIEW_AGGREGATIONS},
    **{f"top{k}": (lambda k: lambda p: p.topk(k, 1).values.mean(1))(k) for k in (3, 4)},
    **{f"power{q}": (lambda q: lambda p: (p ** q).mean(1))(q) for q in (2, 4, 8)},
    "geometric": lambda p: p.clamp_min(1e-9).log().mean(1),
    "confidence-weighted": lambda p: (p * p.max(2, keepdim=True).values).sum(1),
    "vote": lambda p: torch.nn.functional.one_hot(p.argmax(2), p.shape[2]).sum(1) + 1e-3 * p.mean(1),
    "pair-max": pair_max,
}
METHODS = ("adaptive", "fcn-max", "fcn-mean")


def main() -> int:
    torch.set_num_threads(2)
    scorer = study.Scorer(read_state_dict(study.DEMO_WEIGHTS))
    accuracy, views = {}, {}
    with Pool(2) as pool:
        for mode, name, width, height, unit in CONDITIONS:
            pictures, labels = choice.render_pictures(pool, SEED, PICTURES, CHUNK, width, height, unit)
            probabilities = choice.view_probabilities(scorer, pictures, choice.planner(SCALES, False), True)
            condition = f"{mode} {name}"
            for method in METHODS:
                rows = probabilities[method]
                accuracy.setdefault(method, {})[condition] = {
                    rule: round(float((combine(rows).argmax(1) == labels).float().mean()), 4)
                    for rule, combine in RULES.items()}
                views.setdefault(method, {})[condition] = [
                    round(float((rows[:, v].argmax(1) == labels).float().mean()), 4) for v in range(rows.shape[1])]
            print(condition, json.dumps(accuracy["fcn-max"][condition]), flush=True)
    summary = {method: {rule: summarise(by_condition, rule) for rule in RULES} for method, by_condition in accuracy.items()}
    (DOCS / "view-aggregation-choice.json").write_text(json.dumps({
        "command": "python scripts/research/view_aggregation_choice.py",
        "date": datetime.now(timezone.utc).date().isoformat(), "machine": f"{platform.machine()} CPU, 2 threads",
        "torch": torch.__version__, "weights": study.DEMO_WEIGHTS.name, "seed": SEED,
        "pictures_per_condition": {"scenes": PICTURES, "probe": PICTURES}, "scales": list(SCALES), "flip": True,
        "views": [f"{s}" for s in SCALES] + [f"{s} mirrored" for s in SCALES],
        "summary": summary, "accuracy": accuracy, "view_accuracy": views}, indent=1) + "\n")
    for rule in RULES:
        print(rule.ljust(20), "  ".join(f"{m}: {summary[m][rule]}" for m in ("fcn-max", "adaptive")))
    return 0


def summarise(by_condition, rule):
    """Mean over conditions, worst zoom condition, worst canvas condition."""
    values = {condition: row[rule] for condition, row in by_condition.items()}
    zoom = [v for c, v in values.items() if c.startswith("zoom")]
    canvas = [v for c, v in values.items() if c.startswith("canvas")]
    return {"mean": round(sum(values.values()) / len(values), 4), "zoom_worst": min(zoom), "canvas_worst": min(canvas)}


if __name__ == "__main__":
    sys.exit(main())
