#!/usr/bin/env python3
"""What the opt-in fast-path options do to answers, on the demo model's held-out test scenes (no server).

    python -m anysize_tools.answer_effects                  # every table's numbers as JSON (the benchmark renders them)
    python -m anysize_tools.answer_effects --device cuda --parts precision decoder   # on a GPU: TF32 and nvJPEG

- Precision: every precision / memory-format option against fp32, on the same images: top-1 agreement, the
  largest probability difference over all classes and images, and top-1 accuracy, on the device asked for (on an
  NVIDIA GPU tf32 really changes the convolutions; on a CPU it is a no-op).
- Decoder: the JPEG decoder the handler uses on that device for plain JPEGs (nvJPEG through
  ``decode_jpeg_batch`` on a GPU, torchvision's libjpeg-turbo on a CPU) against Pillow's decoding of the same
  files: the pixels' largest difference, top-1 agreement and the largest probability difference.
- Size buckets: exact sizes against the nearest bucket, on scenes of many sizes and aspect ratios around the
  demo's training size (where it is accurate, so a cost can show): accuracy of each and top-1 agreement.
Both run the handler's own ImageClassifier.probabilities, so they measure what the service would answer.
"""

from __future__ import annotations

import argparse
import io
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
EFFECT_SIZES = [(TRAIN_SIZE, TRAIN_SIZE)] + [sized(160, aspect) for aspect in ASPECTS[1:]]
BUCKET_LONG_SIDES = (168, 224, 280, 336)  # around the training size, where the model is accurate
BUCKET_ASPECTS = ((1, 1), (3, 2), (2, 3))


def bucket_sizes(long_sides: Sequence[int]) -> str:
    """One square, one landscape and one portrait bucket per long side, as handler 'buckets' text."""
    return ",".join(f"{w}x{h}" for side in long_sides for w, h in (sized(side, a) for a in BUCKET_ASPECTS))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def demo_classifier(head: str, precision: str = "fp32", channels_last: bool = False, buckets: str = "",
                    device: torch.device | None = None):
    from anysize.classifier import ImageClassifier
    from anysize.handler_config import HandlerOptions
    from anysize.vgg_models import load_model
    from anysize.weights import read_state_dict

    options = HandlerOptions(arch="demo", head=head, precision=precision, channels_last=channels_last,
                             buckets=buckets)
    labels = json.loads((DEMO / "labels.json").read_text())
    model = load_model("demo", head, read_state_dict(DEMO / "demo-vgg.pth"))
    return ImageClassifier(model, options, labels, "demo", device or torch.device("cpu"))


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
    return torch.stack([rows[i].cpu() for i in range(len(pixels))])


def accuracy(probs: torch.Tensor, labels: List[int]) -> float:
    return float((probs.argmax(1) == torch.tensor(labels)).float().mean())


def precision_effects(count: int = 1000, device: torch.device | None = None) -> List[dict]:
    device = device or torch.device("cpu")
    pixels, labels = scenes(EFFECT_SIZES, count)
    rows = []
    for head in ("fcn", "adaptive"):
        reference = probabilities(demo_classifier(head, device=device), pixels)
        for precision, channels_last in PRECISION_VARIANTS:
            probs = probabilities(demo_classifier(head, precision, channels_last, device=device), pixels)
            rows.append({"head": head, "precision": precision, "channels_last": channels_last, "images": count,
                         "device": device.type,
                         "top1_agreement": float((probs.argmax(1) == reference.argmax(1)).float().mean()),
                         "max_probability_difference": float((probs - reference).abs().max()),
                         "accuracy": accuracy(probs, labels), "fp32_accuracy": accuracy(reference, labels)})
            print(f"[answers] {head} {precision}{' channels_last' if channels_last else ''}: agreement "
                  f"{rows[-1]['top1_agreement']:.4f}, max |dp| {rows[-1]['max_probability_difference']:.2e}",
                  flush=True)
    return rows


def decoder_effects(count: int = 500, device: torch.device | None = None, quality: int = 90) -> List[dict]:
    """Plain JPEGs decoded as the handler decodes them on ``device`` against Pillow's pixels, classified by the
    same fp32 model on that device: how far the pixels and the answers move."""
    from PIL import Image

    from anysize.image_decoding import decode_jpeg_batch

    device = device or torch.device("cpu")
    decoder = "nvJPEG (torchvision.io.decode_jpeg on cuda)" if device.type == "cuda" else \
        "libjpeg-turbo (torchvision.io.decode_jpeg on the CPU)"
    pixels, labels = scenes(EFFECT_SIZES, count)  # the scenes the precision table uses, saved as JPEG
    bodies = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image.numpy()).save(buffer, "JPEG", quality=quality)
        bodies.append(buffer.getvalue())
    # Pillow itself (the handler's decode_views hands plain JPEGs to torchvision, so it is no reference here).
    pillow = [torch.from_numpy(np.array(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.uint8))
              for body in bodies]
    on_device = [pixels.cpu() for pixels in decode_jpeg_batch(bodies, device)]
    pixel_difference = max(int((a.int() - b.int()).abs().max()) for a, b in zip(pillow, on_device))
    differing = sum(not torch.equal(a, b) for a, b in zip(pillow, on_device))
    rows = []
    for head in ("fcn", "adaptive"):
        classifier = demo_classifier(head, device=device)
        reference, probs = probabilities(classifier, pillow), probabilities(classifier, on_device)
        rows.append({"head": head, "device": device.type, "decoder": decoder, "images": count, "quality": quality,
                     "images_with_other_pixels": differing, "max_pixel_difference": pixel_difference,
                     "top1_agreement": float((probs.argmax(1) == reference.argmax(1)).float().mean()),
                     "max_probability_difference": float((probs - reference).abs().max()),
                     "accuracy": accuracy(probs, labels), "pillow_accuracy": accuracy(reference, labels)})
        print(f"[answers] {head} decoder {device.type}: {differing} of {count} images with other pixels (at most "
              f"{pixel_difference}), agreement {rows[-1]['top1_agreement']:.4f}, max |dp| "
              f"{rows[-1]['max_probability_difference']:.2e}", flush=True)
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


PARTS = ("precision", "decoder", "buckets")


def effects(device: torch.device, parts=PARTS) -> Dict[str, List[dict]]:
    """The tables asked for, on ``device`` (buckets are a CPU-side resize: measured on the CPU)."""
    torch.manual_seed(0)
    table = {"precision": lambda: precision_effects(device=device), "decoder": lambda: decoder_effects(device=device),
             "buckets": bucket_effects}
    return {part: table[part]() for part in parts}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=default_device().type, choices=("cpu", "cuda"),
                        help="where the model runs and plain JPEGs are decoded (default: cuda when there is one)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this process")
    print(json.dumps(effects(torch.device(args.device), args.parts), indent=1))


if __name__ == "__main__":
    main()
