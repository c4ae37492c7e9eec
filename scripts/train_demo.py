#!/usr/bin/env python3
"""Train the shipped demo model: a narrow VGG (arch ``demo``) on the generated shapes data set, on the CPU.

    .venv/bin/python scripts/train_demo.py            # what `make train-demo` runs (about 15 minutes on 2 cores)

Writes model_store/demo/: ``demo-vgg.pth`` (a torchvision-format state dict, so both heads and the archive builder
take it as they take torchvision's checkpoints), ``labels.json``, ``training.json`` (settings and metrics) and
``MODEL_CARD.md``. Everything random (scenes, order, initialisation) comes from ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO / "handlers")]

from image_decoding import normalize  # noqa: E402
from shapes_dataset import CLASSES, render_example  # noqa: E402
from vgg_models import ARCHS, CONV_LAYOUTS, build_model, training_size  # noqa: E402

ARCH = "demo"
DEFAULT_OUTPUT = REPO / "model_store" / "demo"


def render_block(job: Tuple[int, str, int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    seed, split, start, count, size = job
    images, labels = [], []
    for index in range(start, start + count):
        image, label = render_example(seed, split, index, size, size)
        images.append(np.asarray(image))
        labels.append(label)
    return np.stack(images), np.array(labels)


def render_split(seed: int, split: str, count: int, size: int, processes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W, 3) uint8 images and (N,) labels, rendered in parallel blocks (the result does not depend on it)."""
    block = 500
    jobs = [(seed, split, start, min(block, count - start), size) for start in range(0, count, block)]
    with Pool(processes) as pool:
        parts = pool.map(render_block, jobs)
    return torch.from_numpy(np.concatenate([p[0] for p in parts])), torch.from_numpy(np.concatenate([p[1] for p in parts]))


@torch.inference_mode()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        logits = model(normalize(images[start:start + batch]))
        correct += (logits.argmax(1) == labels[start:start + batch]).sum().item()
    return correct / len(images)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    size = training_size(ARCHS[ARCH])
    started = time.perf_counter()
    train_images, train_labels = render_split(args.seed, "train", args.train_images, size, args.threads)
    val_images, val_labels = render_split(args.seed, "val", args.val_images, size, args.threads)
    print(f"rendered {len(train_images)} training and {len(val_images)} validation images at {size}x{size} "
          f"in {time.perf_counter() - started:.0f} s", flush=True)

    model = build_model(ARCH, "adaptive", num_classes=len(CLASSES)).train()
    for layer in model.classifier:
        if isinstance(layer, torch.nn.Dropout):  # VGG's 0.5 starves a 128-wide classifier; inert at eval anyway
            layer.p = args.dropout
    steps_per_epoch = len(train_images) // args.batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch)
    order_generator = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_images), generator=order_generator)
        flips = torch.rand(len(train_images), generator=order_generator) < 0.5
        losses = []
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size:(step + 1) * args.batch_size]
            batch = normalize(train_images[index])
            # mirror half the batch: every class is mirror-symmetric as a class, and it doubles the scenes seen
            batch = torch.where(flips[index].view(-1, 1, 1, 1), batch.flip(3), batch)
            loss = F.cross_entropy(model(batch), train_labels[index], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        val_accuracy = accuracy(model, val_images, val_labels)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_accuracy": val_accuracy,
                        "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(history[-1]), flush=True)
    return {"model": model.eval(), "history": history, "training_size": size,
            "seconds": round(time.perf_counter() - started, 1)}


MODEL_CARD = """# Demo model: `demo` (a narrow VGG) trained on generated shapes

What it is: a VGG-style network with the same structure as torchvision's VGG (3x3 conv blocks with batch norm and
2x2 max pools, then `AdaptiveAvgPool2d(7)` and a three-layer fully connected classifier), 8x narrower and with four
pool levels: conv layout `{layout}`, hidden width {hidden}, {params:,} parameters ({megabytes:.1f} MB). Its state dict
has torchvision's key layout, so the `adaptive` and `fcn` heads and the FC-to-conv conversion apply unchanged.

Classes ({num_classes}): {classes}.

## Data
`scripts/shapes_dataset.py`: one shape per image at a random position, size (radius 16-42 % of the shorter side),
rotation and colour, over a random texture (gradient, stripes, checker or smooth blotches), drawn with antialiased
edges. Every scene is a function of (seed, split, index) and can be rendered at any size and aspect ratio.
Training: {train_images:,} scenes of the `train` split at {size}x{size}, mirrored at random; validation:
{val_images:,} scenes of the `val` split. The resolution study uses the `test` split.

## Training
Command: `{command}` (seed {seed}), {epochs} epochs, batch {batch_size}, AdamW (lr {lr}, cosine decay to 0, weight
decay 5e-4), dropout {dropout} in the classifier while training, label smoothing 0.05, {threads} CPU threads. It took {minutes:.1f} minutes on {machine}.
Everything random (scenes, their order, mirroring, initialisation) comes from the seed: two runs on the same
machine and library versions give bit-identical weights (checked with two short runs,
`--train-images 2000 --epochs 1`).

## Accuracy
Top-1 on the {val_images:,} validation scenes at the training size {size}x{size}: **{val_accuracy:.1%}**.
How accuracy changes with the input resolution and aspect ratio, for both heads: `docs/resolution-study.md`.

| epoch | mean loss | validation top-1 | elapsed (s) |
|---|---:|---:|---:|
{history_rows}
"""


def write_outputs(args: argparse.Namespace, result: dict) -> None:
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    model = result["model"]
    torch.save(model.state_dict(), output / "demo-vgg.pth")
    (output / "labels.json").write_text(json.dumps(CLASSES, indent=1) + "\n")
    spec = ARCHS[ARCH]
    params = sum(p.numel() for p in model.parameters())
    summary = {"arch": ARCH, "seed": args.seed, "training_size": result["training_size"],
               "train_images": args.train_images, "val_images": args.val_images, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "dropout": args.dropout, "threads": args.threads,
               "seconds": result["seconds"],
               "val_accuracy": result["history"][-1]["val_accuracy"], "history": result["history"],
               "parameters": params, "torch": torch.__version__, "machine": f"{platform.machine()}, "
               f"{torch.get_num_threads()} threads"}
    (output / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    rows = "\n".join(f"| {h['epoch']} | {h['loss']:.3f} | {h['val_accuracy']:.1%} | {h['seconds']} |"
                     for h in result["history"])
    (output / "MODEL_CARD.md").write_text(MODEL_CARD.format(
        layout=" ".join(map(str, CONV_LAYOUTS[spec.layout])), hidden=spec.hidden,
        params=params, megabytes=(output / "demo-vgg.pth").stat().st_size / 1e6, num_classes=len(CLASSES),
        classes=", ".join(CLASSES), size=result["training_size"], command=" ".join(["python"] + sys.argv),
        minutes=result["seconds"] / 60, machine=f"{platform.machine()} CPU, torch {torch.__version__}",
        history_rows=rows, **{k: v for k, v in summary.items() if k not in ("history", "machine")}))
    print(f"wrote {output}/demo-vgg.pth, labels.json, training.json, MODEL_CARD.md", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=24_000)
    parser.add_argument("--val-images", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="directory for the weights, labels and card")
    args = parser.parse_args()
    write_outputs(args, train(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
