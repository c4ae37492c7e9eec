#!/usr/bin/env python3
"""What the opt-in fast-path options do to answers, on the demo model's held-out test scenes (no server).

    python -m anysize_tools.answer_effects            # prints both tables' numbers as JSON (the benchmark renders them)

- Precision: every precision / memory-format option against fp32, on the same images: top-1 agreement, the
  largest probability difference over all classes and images, and top-1 accuracy.
- Size buckets: exact sizes against the nearest bucket, on scenes of many sizes and aspect ratios around the
  demo's training size (where it is accurate, so a cost can show): accuracy of each and top-1 agreement.
Both run the handler's own ImageClassifier.probabilities, so they measure what the service would answer.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from anysize.vgg_models import ARCHS, training_size

from .paths import DEMO
from .shapes import render_example
from .workloads import ASPECTS, sized

SEED = 11  # test-split scenes under a seed the demo model was not trained or studied on
TRAIN_SIZE = training_size(ARCHS["demo"])
PRECISION_VARIANTS = [("fp32", True), ("tf32", False), ("bf16", False), ("bf16", True), ("fp16", False),
                      ("fp16", True)]
BUCKET_LONG_SIDES = (168, 224, 280, 336)  # around the training size, where the model is accurate
BUCKET_ASPECTS = ((1, 1), (3, 2), (2, 3))


def bucket_sizes(long_sides: Sequence[int]) -> str:
    """One square, one landscape and one portrait bucket per long side, as handler 'buckets' text."""
    return ",".join(f"{w}x{h}" for side in long_sides for w, h in (sized(side, a) for a in BUCKET_ASPECTS))


def demo_classifier(head: str, precision: str = "fp32", channels_last: bool = False, buckets: str = ""):
    from anysize.classifier import ImageClassifier
    from anysize.handler_config import HandlerOptions
    from anysize.vgg_models import load_model
    from anysize.weights import read_state_dict

    options = HandlerOptions(arch="demo", head=head, precision=precision, channels_last=channels_last,
                             buckets=buckets)
    labels = json.loads((DEMO / "labels.json").read_text())
    model = load_model("demo", head, read_state_dict(DEMO / "demo-vgg.pth"))
    return ImageClassifier(model, options, labels, "demo", torch.device("cpu"))


def scenes(sizes: Sequence[Tuple[int, int]], count: int) -> Tuple[List[torch.Tensor], List[int]]:
    pixels, labels = [], []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        image, label = render_example(SEED, "test", index, width, height)
        pixels.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()))
        labels.append(label)
    return pixels, labels


def probabilities(classifier, pixels: List[torch.Tensor], batch: int = 32) -> torch.Tensor:
    """Probabilities per image, same-sized images batched together as the handler does."""
    by_size: Dict[tuple, List[int]] = defaultdict(list)
    for index, image in enumerate(pixels):
        by_size[tuple(image.shape)].append(index)
    rows: Dict[int, torch.Tensor] = {}
    for indices in by_size.values():
        for start in range(0, len(indices), batch):
            chunk = indices[start:start + batch]
            for index, row in zip(chunk, classifier.probabilities(torch.stack([pixels[i] for i in chunk]))):
                rows[index] = row
    return torch.stack([rows[i] for i in range(len(pixels))])


def accuracy(probs: torch.Tensor, labels: List[int]) -> float:
    return float((probs.argmax(1) == torch.tensor(labels)).float().mean())


def precision_effects(count: int = 1000) -> List[dict]:
    sizes = [(TRAIN_SIZE, TRAIN_SIZE)] + [sized(160, aspect) for aspect in ASPECTS[1:]]
    pixels, labels = scenes(sizes, count)
    rows = []
    for head in ("fcn", "adaptive"):
        reference = probabilities(demo_classifier(head), pixels)
        for precision, channels_last in PRECISION_VARIANTS:
            probs = probabilities(demo_classifier(head, precision, channels_last), pixels)
            rows.append({"head": head, "precision": precision, "channels_last": channels_last, "images": count,
                         "top1_agreement": float((probs.argmax(1) == reference.argmax(1)).float().mean()),
                         "max_probability_difference": float((probs - reference).abs().max()),
                         "accuracy": accuracy(probs, labels), "fp32_accuracy": accuracy(reference, labels)})
            print(f"[answers] {head} {precision}{' channels_last' if channels_last else ''}: agreement "
                  f"{rows[-1]['top1_agreement']:.4f}, max |dp| {rows[-1]['max_probability_difference']:.2e}",
                  flush=True)
    return rows


def bucket_effects(count: int = 840) -> List[dict]:
    buckets = bucket_sizes(BUCKET_LONG_SIDES)
    sizes = [sized(side, aspect) for side in BUCKET_LONG_SIDES for aspect in ASPECTS]
    pixels, labels = scenes(sizes, count)
    rows = []
    for head in ("fcn", "adaptive"):
        exact = probabilities(demo_classifier(head), pixels)
        bucketed_classifier = demo_classifier(head, buckets=buckets)
        from anysize.size_buckets import resize_to_bucket

        resized = [resize_to_bucket(p, bucketed_classifier.buckets) for p in pixels]
        bucketed = probabilities(bucketed_classifier, resized)
        rows.append({"head": head, "buckets": buckets, "images": count, "distinct_sizes": len(set(sizes)),
                     "bucketed_sizes": len({tuple(p.shape) for p in resized}),
                     "exact_accuracy": accuracy(exact, labels), "bucketed_accuracy": accuracy(bucketed, labels),
                     "top1_agreement": float((exact.argmax(1) == bucketed.argmax(1)).float().mean())})
        print(f"[answers] {head} buckets: accuracy exact {rows[-1]['exact_accuracy']:.3f}, bucketed "
              f"{rows[-1]['bucketed_accuracy']:.3f}", flush=True)
    return rows


if __name__ == "__main__":
    torch.manual_seed(0)
    print(json.dumps({"precision": precision_effects(), "buckets": bucket_effects()}, indent=1))
