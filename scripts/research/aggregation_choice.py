#!/usr/bin/env python3
"""How the fcn archive's aggregation over positions and over views was chosen: every view's class-score map of
held-out pictures (seed 5, not the study's seeds) kept once, then each candidate rule (positions: mean, max,
log-sum-exp at several temperatures, top-k mean, the best position's probability; views: mean or each class's
best view; with and without a view at the picture's own size, at most 1 MP) scored on the same maps. Nine zoom and five canvas conditions, scenes and probe pictures. Writes
docs/aggregation-choice.json; prints the mean and the worst condition per rule, best first.

    .venv/bin/python scripts/research/aggregation_choice.py      # about 9 minutes on 2 cores
"""
import json
import platform
import sys
from datetime import datetime, timezone
from multiprocessing import Pool

import resolution_study as study
import torch

from anysize.image_decoding import normalize
from anysize.scale_policy import combine_views, view_sizes
from anysize.vgg_models import pool_up_to
from anysize.weights import read_state_dict
from anysize_tools.paths import DOCS

SEED, PICTURES, CHUNK = 5, 60, 20
OWN_SIZE_CAP = 1_048_576  # pixels of the optional view at the picture's own size
CONDITIONS = [("zoom", "56", 56, 56, None), ("zoom", "224", 224, 224, None), ("zoom", "640x480", 640, 480, None),
              ("zoom", "1920x1080", 1920, 1080, None), ("zoom", "1080x1920", 1080, 1920, None),
              ("zoom", "448x224", 448, 224, None), ("zoom", "224x448", 224, 448, None),
              ("zoom", "896", 896, 896, None), ("zoom", "4032x3024", 4032, 3024, None),
              ("canvas", "336", 336, 336, study.UNIT), ("canvas", "448", 448, 448, study.UNIT),
              ("canvas", "672", 672, 672, study.UNIT), ("canvas", "896", 896, 896, study.UNIT),
              ("canvas", "896x504", 896, 504, study.UNIT)]


def position_rules():
    """name -> f((views, classes, positions) logits) -> (views, classes) probabilities."""
    def softmax_of(logits_fn):
        return lambda maps: torch.softmax(logits_fn(maps), 1)

    rules = {"mean": softmax_of(lambda m: m.mean(2)), "max": softmax_of(lambda m: m.amax(2))}
    for t in (1.0, 0.5, 0.25):
        rules[f"lse{t:g}"] = softmax_of(
            lambda m, t=t: t * (torch.logsumexp(m / t, 2) - torch.log(torch.tensor(float(m.shape[2])))))
    for k in (2, 4, 9):
        rules[f"top{k}"] = softmax_of(lambda m, k=k: m.topk(min(k, m.shape[2]), 2).values.mean(2))

    def best_position(maps):  # each class's best position's probability, renormalised
        best = torch.softmax(maps, 1).amax(2)
        return best / best.sum(1, keepdim=True)
    rules["pmax"] = best_position
    return rules


@torch.inference_mode()
def score_maps(trunk, classifier, pictures, sizes_for):
    """Per picture: a list over views (and mirrors) of (classes, positions) logits."""
    pool = study.ARCHS["demo"].pool_size
    return [[classifier(pool_up_to(trunk(normalize(view[None])), pool))[0].flatten(1)
             for view in study.views_and_mirrors(body, sizes_for, flip=True)] for body, _ in pictures]


def evaluate(maps, labels, rules, extra):
    """{rule name: accuracy}; a rule applies a position rule to every view, then combines views. ``extra`` says
    per picture how many of its views (and as many mirrors) are the optional own-size view, kept in "+own" rules."""
    results = {}
    for name, rule in rules.items():
        for views in ("mean", "max"):
            for own in (False, True):
                hits = 0
                for picture, label, count in zip(maps, labels, extra):
                    half = len(picture) // 2
                    keep = picture if own else picture[:half - count] + picture[half:2 * half - count]
                    per_view = torch.cat([rule(m[None]) for m in keep])
                    hits += int(combine_views(per_view, views).argmax() == label)
                results[f"positions={name} views={views}{' +own' if own else ''}"] = round(hits / len(labels), 4)
    return results


def main() -> int:
    torch.set_num_threads(2)
    scorer = study.Scorer(read_state_dict(study.DEMO_WEIGHTS))
    trunk, classifier = scorer.fcn.features, scorer.fcn.classifier

    def sizes_for(width, height):  # the study's scales, then the picture's own size (at most 1 MP) if larger
        sizes = view_sizes(width, height, "native", None, study.MULTI_SCALES, study.MAX_PIXELS, study.MIN_SIDE)
        if min(width, height) > max(study.MULTI_SCALES):
            sizes.append(study.own_size(width, height, OWN_SIZE_CAP))
        return sizes
    rules = position_rules()
    results = {}
    with Pool(2) as pool:
        for mode, name, width, height, unit in CONDITIONS:
            for source in ("probe", "scenes"):
                jobs = [(source, SEED, start, CHUNK, width, height, unit) for start in range(0, PICTURES, CHUNK)]
                pictures = [item for part in pool.map(study.render_jpegs, jobs) for item in part]
                maps = score_maps(trunk, classifier, pictures, sizes_for)
                extra = 1 if min(width, height) > max(study.MULTI_SCALES) else 0
                results[f"{mode} {name} {source}"] = evaluate(maps, [label for _, label in pictures], rules,
                                                              [extra] * len(pictures))
            print(mode, name, json.dumps({k: v for k, v in results[f"{mode} {name} scenes"].items()
                                          if k.endswith("max")}), flush=True)
    summary = {}
    for rule in next(iter(results.values())):
        values = {condition: row[rule] for condition, row in results.items()}
        zoom = [v for c, v in values.items() if c.startswith("zoom")]
        canvas = [v for c, v in values.items() if c.startswith("canvas")]
        summary[rule] = {"mean": round(sum(values.values()) / len(values), 4), "worst": min(values.values()),
                         "zoom_mean": round(sum(zoom) / len(zoom), 4), "zoom_worst": min(zoom),
                         "canvas_mean": round(sum(canvas) / len(canvas), 4), "canvas_worst": min(canvas)}
    (DOCS / "aggregation-choice.json").write_text(json.dumps({
        "command": "python scripts/research/aggregation_choice.py", "date": datetime.now(timezone.utc).date().isoformat(),
        "machine": f"{platform.machine()} CPU, 2 threads", "torch": torch.__version__, "weights": "demo-vgg.pth",
        "seed": SEED, "pictures_per_condition_and_source": PICTURES, "scales": list(study.MULTI_SCALES),
        "flip": True, "own_size_cap": OWN_SIZE_CAP, "summary": summary, "results": results}, indent=1) + "\n")
    for rule, row in sorted(summary.items(), key=lambda item: -item[1]["mean"]):
        print(f"{rule:32} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
