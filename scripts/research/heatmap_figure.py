#!/usr/bin/env python3
"""Class-score heatmaps of a few probe pictures at several sizes: docs/heatmaps.{json,png} for docs/heatmaps.md.

    .venv/bin/python scripts/research/heatmap_figure.py          # what `make heatmaps` runs (under a minute)

Each picture is drawn by the independent probe (anysize_tools/shape_probe.py, other drawing code than the
training data), sent as JPEG through the service's own request path (ImageClassifier, the demo model's fcn head,
the image at its own size, max over positions) with ``heatmap`` asked for; the figure overlays the top class's map
on the picture, each cell at the centre of the 224-px window it scores. The JSON keeps every answer and map.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anysize.classifier import ImageClassifier
from anysize.handler_config import HandlerOptions
from anysize.vgg_models import load_model
from anysize.weights import read_state_dict
from anysize_tools.paths import DEMO, DOCS
from anysize_tools.shape_probe import probe_jpeg

SEED = 20261207
# (title, width, height, canvas unit or None): a zoom picture and the same kind of shape on growing canvases
PICTURES = (("zoom 224x224", 224, 224, None), ("zoom 448x336", 448, 336, None),
            ("canvas 448x448 (4x)", 448, 448, 112), ("canvas 672x672 (6x)", 672, 672, 112),
            ("canvas 896x504 (16:9, 8x)", 896, 504, 112))
STRIDE, WINDOW = 32, 224  # the fcn head's grid: one cell per 32 px, each scoring a 224-px window


def measure(weights: Path) -> dict:
    torch.set_num_threads(2)
    labels = json.loads((DEMO / "labels.json").read_text())
    options = HandlerOptions(arch="demo", head="fcn", scale_policy="native", scales="", flip=False,
                             aggregation="max", warmup_sizes="", topk=3)
    classifier = ImageClassifier(load_model("demo", "fcn", read_state_dict(weights)), options, labels, "demo-fcn",
                                 torch.device("cpu"))
    request = classifier.defaults.__class__(**{**classifier.defaults.__dict__, "heatmap": True})
    rows = []
    for index, (title, width, height, unit) in enumerate(PICTURES):
        body, label = probe_jpeg(SEED, index, width, height, unit)
        answer = classifier.classify([body], [request]).answers[0]
        rows.append({"title": title, "width": width, "height": height, "unit": unit, "label": labels[label],
                     "jpeg_bytes": len(body), "answer": answer})
    return {"seed": SEED, "weights": weights.name, "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "command": " ".join(["python"] + sys.argv), "pictures": rows}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["pictures"]
    figure, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4.2))
    for axis, row, index in zip(axes, rows, range(len(rows))):
        body, _ = probe_jpeg(results["seed"], index, row["width"], row["height"], row["unit"])
        image = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        view = row["answer"]["heatmap"]["views"][0]
        top = view["classes"][0]
        grid = np.array(top["map"])
        height, width = grid.shape
        # each cell drawn over the middle of its window: centres from WINDOW / 2, STRIDE apart
        extent = (WINDOW / 2 - STRIDE / 2, WINDOW / 2 + STRIDE * (width - 0.5),
                  WINDOW / 2 + STRIDE * (height - 0.5), WINDOW / 2 - STRIDE / 2)
        axis.imshow(image)
        axis.imshow(grid, cmap="inferno", alpha=0.55, extent=extent, interpolation="nearest")
        axis.set_xlim(0, row["width"])
        axis.set_ylim(row["height"], 0)
        probability = row["answer"]["predictions"][0]["probability"]
        axis.set_title(f"{row['title']}\ndrawn: {row['label']}; answer: {top['label']} {probability:.0%}",
                       fontsize=9)
        axis.axis("off")
    figure.suptitle("demo-fcn: the top class's score map over the picture (max over positions gives the answer)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEMO / "demo-vgg.pth")
    parser.add_argument("--output", type=Path, default=DOCS / "heatmaps", help="path prefix of .json and .png")
    args = parser.parse_args()
    results = measure(args.weights)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.output.with_suffix(".png"))
    for row in results["pictures"]:
        print(f"{row['title']}: drawn {row['label']}, answered {row['answer']['predictions'][0]['label']}")
    print(f"wrote {args.output}.json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
