#!/usr/bin/env python3
"""How do the adaptive and fcn heads compare as the input resolution moves away from the training resolution?

    .venv/bin/python scripts/resolution_study.py        # what `make study` runs (about 20 minutes on 2 cores)

Evaluates the shipped demo model on the same held-out generated scenes (the `test` split) rendered at every
resolution and aspect ratio, with three methods: the `adaptive` head and the `fcn` head on the image as the service
sees it (the handler's own size policy: images under 32 px are upscaled to 32), and the classic baseline "resize
the shorter side to 8/7 of the training size, centre-crop the training size" into the model. Writes
docs/resolution-study.{json,png,md}; text under "## Reading" in an existing .md is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO / "handlers")]

from handler_config import HandlerOptions  # noqa: E402
from image_decoding import network_size, normalize, resize_to_contract  # noqa: E402
from shapes_dataset import render_example  # noqa: E402
from vgg_models import ARCHS, load_model, training_size  # noqa: E402
from weights import read_state_dict  # noqa: E402

DEMO_WEIGHTS = REPO / "model_store" / "demo" / "demo-vgg.pth"
DOCS = REPO / "docs"
METHODS = ("adaptive", "fcn", "fcn-max", "resize+crop")
ZOOM_SCALES = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 8)  # square sides as multiples of the training size
CANVAS_SCALES = (1.5, 2, 3, 4, 8)
ASPECTS = (("1:2", 1, 2), ("2:1", 2, 1), ("16:9", 16, 9))  # width:height, shorter side = training size


def conditions(train_size: int) -> List[Tuple[str, str, int, int, float | None]]:
    """(mode, name, width, height, object_scale). "zoom": the same picture in more or fewer pixels, so the shape
    grows with the image. "canvas": the shape keeps its training-size pixel scale on a larger canvas."""
    def side(scale: float) -> int:
        return round(scale * train_size)

    zoom = [("zoom", f"{side(s)}x{side(s)}", side(s), side(s), None) for s in ZOOM_SCALES]
    aspects = [("zoom", f"{name} ({side(max(w / h, 1))}x{side(max(h / w, 1))})", side(max(w / h, 1)),
                side(max(h / w, 1)), None) for name, w, h in ASPECTS]
    canvas = [("canvas", f"{side(s)}x{side(s)}", side(s), side(s), train_size) for s in CANVAS_SCALES]
    canvas.append(("canvas", f"16:9 ({side(32 / 9)}x{side(2)})", side(32 / 9), side(2), train_size))
    return zoom + aspects + canvas


def render_block(job) -> Tuple[List[np.ndarray], List[int]]:
    seed, start, count, width, height, object_scale = job
    images, labels = [], []
    for index in range(start, start + count):
        image, label = render_example(seed, "test", index, width, height, object_scale)
        images.append(np.asarray(image))
        labels.append(label)
    return images, labels


def as_served(images: torch.Tensor) -> torch.Tensor:
    """The service's size policy, exactly as the handler applies it (only 28 px images change: up to 32)."""
    options = HandlerOptions(arch="demo", head="fcn")
    height, width = images.shape[1:3]
    if network_size(width, height, options.max_pixels, options.min_side) == (width, height):
        return images
    return torch.from_numpy(np.stack([
        np.asarray(resize_to_contract(Image.fromarray(pixels), options.max_pixels, options.min_side))
        for pixels in images.numpy()]))


def render_condition(pool: Pool, seed: int, count: int, width: int, height: int, object_scale: float | None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    block = 100
    parts = pool.map(render_block, [(seed, s, min(block, count - s), width, height, object_scale)
                                    for s in range(0, count, block)])
    images = [image for part in parts for image in part[0]]
    labels = [label for part in parts for label in part[1]]
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def resize_and_crop(images: torch.Tensor, train_size: int) -> torch.Tensor:
    """torchvision's classic evaluation transform, Resize(8/7 x size) then CenterCrop(size), in PIL."""
    resize_to = round(train_size * 8 / 7)
    out = []
    for pixels in images.numpy():
        image = Image.fromarray(pixels)
        scale = resize_to / min(image.size)
        image = image.resize((max(resize_to, round(image.width * scale)), max(resize_to, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
        left, top = (image.width - train_size) // 2, (image.height - train_size) // 2
        out.append(np.asarray(image.crop((left, top, left + train_size, top + train_size))))
    return torch.from_numpy(np.stack(out))


@torch.inference_mode()
def evaluate(forward, images: torch.Tensor, labels: torch.Tensor) -> Tuple[List[float], float]:
    """(top-1 accuracy of each logits tensor ``forward`` returns, milliseconds per image), in ~1.5 MP batches.
    One untimed batch first: the first pass at a new shape pays one-off setup costs."""
    height, width = images.shape[1:3]
    batch = max(1, 1_500_000 // (height * width))
    forward(normalize(images[:batch]))
    correct, seconds = None, 0.0
    for start in range(0, len(images), batch):
        x = normalize(images[start:start + batch])
        started = time.perf_counter()
        outputs = forward(x)
        seconds += time.perf_counter() - started
        hits = [(logits.argmax(1) == labels[start:start + batch]).sum().item() for logits in outputs]
        correct = hits if correct is None else [c + h for c, h in zip(correct, hits)]
    return [c / len(images) for c in correct], 1000 * seconds / len(images)


def fcn_mean_and_max(model: torch.nn.Module):
    """The fcn head's class-score map aggregated two ways: the mean over positions (the VGG paper's dense
    evaluation, what the service does) and, for comparison, the max over positions (each class's best window)."""
    def forward(x: torch.Tensor):
        score_map = model.class_score_map(x)
        return score_map.mean(dim=(2, 3)), score_map.amax(dim=(2, 3))
    return forward


def run_study(args: argparse.Namespace) -> Dict:
    torch.set_num_threads(args.threads)
    state_dict = read_state_dict(Path(args.weights))
    models = {head: load_model("demo", head, state_dict) for head in ("adaptive", "fcn")}
    train_size = training_size(ARCHS["demo"])
    rows = []
    with Pool(args.threads) as pool:
        for mode, name, width, height, object_scale in conditions(train_size):
            started = time.perf_counter()
            rendered, labels = render_condition(pool, args.seed, args.images, width, height, object_scale)
            images = as_served(rendered)
            row = {"mode": mode, "condition": name, "width": width, "height": height,
                   "fed_size": list(images.shape[1:3][::-1]), "images": len(labels)}
            (row["adaptive_accuracy"],), row["adaptive_ms"] = evaluate(lambda x: (models["adaptive"](x),), images,
                                                                       labels)
            (row["fcn_accuracy"], row["fcn-max_accuracy"]), row["fcn_ms"] = evaluate(
                fcn_mean_and_max(models["fcn"]), images, labels)
            row["fcn-max_ms"] = row["fcn_ms"]  # one forward pass serves both aggregations
            cropping = time.perf_counter()
            cropped = resize_and_crop(rendered, train_size)  # from the picture a client would send
            crop_ms = 1000 * (time.perf_counter() - cropping) / len(labels)
            (row["resize+crop_accuracy"],), model_ms = evaluate(lambda x: (models["adaptive"](x),), cropped, labels)
            row["resize+crop_ms"] = model_ms + crop_ms  # the baseline's resize and crop are part of its cost
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"training_size": train_size, "seed": args.seed, "images_per_condition": args.images,
            "threads": args.threads, "torch": torch.__version__, "weights": str(Path(args.weights).name),
            "command": " ".join(["python"] + sys.argv), "rows": rows}


def square_rows(results: Dict, mode: str) -> List[Dict]:
    rows = [r for r in results["rows"] if r["mode"] == mode and r["width"] == r["height"]]
    if mode == "canvas":  # at the training size both modes are the same picture
        size = results["training_size"]
        rows = [r for r in results["rows"] if r["mode"] == "zoom" and r["width"] == r["height"] == size] + rows
    return rows


def plot(results: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 1, figsize=(8, 11), sharex=True)
    titles = {"zoom": "zoom: the same picture at more or fewer pixels (the shape grows with the image)",
              "canvas": "canvas: the shape keeps its training pixel size, the background grows"}
    for axis, mode in zip(axes[:2], ("zoom", "canvas")):
        rows = square_rows(results, mode)
        for method, marker in zip(METHODS, "os^d"):
            axis.plot([r["width"] for r in rows], [100 * r[f"{method}_accuracy"] for r in rows], marker=marker,
                      label=method)
        axis.set_title(titles[mode], fontsize=10)
        axis.set_ylabel("top-1 accuracy (%)")
        axis.set_ylim(0, 100)
    rows = square_rows(results, "zoom")
    for method, marker in zip(METHODS, "os^d"):
        axes[2].plot([r["width"] for r in rows], [r[f"{method}_ms"] for r in rows], marker=marker, label=method)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("time per image (ms, CPU)")
    axes[2].set_xlabel("square input side (px)")
    sides = [r["width"] for r in rows]
    for axis in axes:
        axis.axvline(results["training_size"], color="grey", linestyle=":", linewidth=1)
        axis.set_xscale("log", base=2)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    axes[2].set_xticks(sides)
    axes[2].set_xticklabels([str(s) for s in sides])
    figure.suptitle(f"demo model, {results['images_per_condition']} test scenes per size, trained at "
                    f"{results['training_size']} px (dotted)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def markdown(results: Dict, reading: str) -> str:
    header = "| mode | input (W x H) | fed to the model | " + " | ".join(f"{m} top-1" for m in METHODS) + " | " + \
             " | ".join(f"{m} ms/img" for m in METHODS) + " |"
    lines = [header, "|---|---|---|" + "---:|" * (2 * len(METHODS))]
    for r in results["rows"]:
        lines.append(f"| {r['mode']} | {r['condition']} | {r['fed_size'][0]}x{r['fed_size'][1]} | " +
                     " | ".join(f"{100 * r[f'{m}_accuracy']:.1f} %" for m in METHODS) + " | " +
                     " | ".join(f"{r[f'{m}_ms']:.1f}" for m in METHODS) + " |")
    return f"""# Accuracy versus input resolution: adaptive pooling, dense evaluation, resize-and-crop

The shipped demo model (`model_store/demo/`, trained at {results['training_size']}x{results['training_size']} on generated
shapes, see its MODEL_CARD.md) classifies the same {results['images_per_condition']} held-out scenes (the `test` split,
seed {results['seed']}) rendered at each size below, in two modes:

- **zoom**: the same picture at more or fewer pixels. The shape's size is a fraction of the image, so it grows with
  the resolution (a photo taken with a better camera).
- **canvas**: the shape keeps the pixel size it has at the training resolution and the background grows around it
  (a wider field of view at the same detail).

Methods:

- **adaptive**: the image as the service feeds it, `AdaptiveAvgPool2d(7)` before the FC classifier.
- **fcn**: the image as the service feeds it, the classifier as convolutions, class scores averaged over positions
  (the VGG paper's dense evaluation; what the service does).
- **fcn-max**: the same class-score map, aggregated by the maximum over positions instead of the mean (each
  class scored by its best window). Not served; measured to see whether the aggregation or the convolutional
  classifier decides.
- **resize+crop**: the classic baseline, shorter side resized to 8/7 of {results['training_size']} px, centre crop
  {results['training_size']}x{results['training_size']}, then the model (both heads are identical at that size).

"As the service feeds it" includes the handler's size policy: sides under 32 px are upscaled to 32.
Times are forward time per image on this machine's CPU ({results['threads']} threads, torch {results['torch']}),
batched by size, plus for resize+crop its resize and crop; decoding and rendering are not included.

Command: `{results['command']}` (results also in `docs/resolution-study.json`).

![accuracy and time per image versus input size](resolution-study.png)

{chr(10).join(lines)}

## Reading
{reading}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="test scenes per condition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=str(DEMO_WEIGHTS))
    parser.add_argument("--output", default=str(DOCS / "resolution-study"), help="path prefix of .json/.png/.md")
    parser.add_argument("--replot", action="store_true", help="redraw .png and .md from an existing .json")
    args = parser.parse_args()
    prefix = Path(args.output)
    if args.replot:
        results = json.loads(prefix.with_suffix(".json").read_text())
    else:
        results = run_study(args)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, prefix.with_suffix(".png"))
    md_path = prefix.with_suffix(".md")
    old = md_path.read_text() if md_path.is_file() else ""
    reading = old.split("## Reading\n", 1)[1] if "## Reading\n" in old else "(to be written after reading the table)\n"
    if "## Reading\n" in old and not args.replot:
        print("kept the hand-written Reading section: check its figures against the new table", flush=True)
    md_path.write_text(markdown(results, reading))
    print(f"wrote {prefix}.json, .png, .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
