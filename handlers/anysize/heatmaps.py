"""Class-score heatmaps: the fcn head's score map of an answer's top-k classes, as the answer's ``heatmap`` field.

The fcn head computes a class score at every position of a coarse grid (one per 32-px stride of its input, each
scoring a 224-px window); the answer aggregates that map over positions (mean, max or lse) and takes the softmax
over classes. The heatmap is that same map, so it shows where each class scored, at no extra forward cost. For
each view the image was fed at (not the mirrors, which are the same picture reversed), and each of the answer's
top-k classes (at most HEATMAP_CLASSES), it holds the logits at the map's own resolution, their aggregate
``score``, and the view's ``log_normalizer`` (the log-sum-exp of every class's aggregate). So
``exp(score - log_normalizer)`` is that view's probability of the class, and with one view and no mirror it is the
answer's probability: the map is the one the answer came from. With several views or mirrors the answer combines
the views' probabilities as ``view_aggregation`` says. ``size`` is the view as fed (a size bucket's size, where the
archive uses buckets).

    {"heatmap": {"aggregation": "max", "views": [{"size": [H, W], "grid": [h, w], "log_normalizer": 2.3,
                  "classes": [{"index": 3, "label": "square", "score": 4.1, "map": [[...w numbers], ... h rows]}]}]}}
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from .vgg_models import aggregate

DECIMALS = 4  # logits rounded for the JSON: the map is a picture, not a measurement
# At most this many of the top-k classes get a map: on a 1000-class archive topk may be large, and each map of a
# 2048x2048 view holds 3,249 numbers.
HEATMAP_CLASSES = 5


def view_heatmap(score_map: torch.Tensor, size: Tuple[int, int], classes: Sequence[int], labels: Sequence[str],
                 aggregation: str) -> dict:
    """One view's entry: ``score_map`` (classes, h, w) float32 on the CPU, ``size`` the view's [H, W]."""
    scores = aggregate(score_map[None], aggregation)[0]
    return {"size": list(size), "grid": list(score_map.shape[1:]),
            "log_normalizer": float(torch.logsumexp(scores, 0)),
            "classes": [{"index": int(k), "label": labels[int(k)], "score": float(scores[k]),
                         "map": [[round(float(v), DECIMALS) for v in row] for row in score_map[k]]}
                        for k in classes]}


def heatmap_field(maps: List[Tuple[Tuple[int, int], torch.Tensor]], classes: Sequence[int], labels: Sequence[str],
                  aggregation: str) -> dict:
    """The answer's ``heatmap``: one entry per view, in the order the views were fed."""
    return {"aggregation": aggregation,
            "views": [view_heatmap(score_map, size, classes, labels, aggregation) for size, score_map in maps]}
