#!/usr/bin/env python3
"""Train the shipped demo model: a narrow VGG (arch ``demo``) on generated shapes at many scales, on the CPU.

    .venv/bin/python scripts/research/train_demo.py            # what `make train-demo` runs (its model card says how long it took)

Scale jittering in both senses the resolution study measures (the VGG paper trains at S in [256, 512] for the
same reason): every batch has its own size, shorter side 48 to 448 px and aspect ratios 1:2 to 2:1, and each
scene in it is either "zoom" (the shape a fraction of the picture, so its pixel size follows the image) or "canvas"
(a shape of 8 to 54 px radius on a larger background). Some scenes are rendered smaller and upscaled (blurred), JPEG
compressed or noisy. Both heads are trained at once on the same features: the adaptive head's logits, and the
fcn head's class-score map aggregated by the mean and by the max over positions. The forward and backward passes
run in bfloat16 autocast on channels-last tensors (about 3x faster on this CPU than fp32, with fp32 master weights
and an fp32 loss); the validation and the served model run in fp32. At the end the batch-norm statistics are
re-estimated over many batches of the full spread, since the running averages remember only the last few sizes.

Stage 2 (``--abstain-steps``) goes on from those weights with scenes whose shape is too small to tell, trained
towards the uniform distribution, so that the small views of multi-scale evaluation stop voting confidently;
``--from-weights`` runs stage 2 alone from saved stage-1 weights. ``--partial-share`` is an experiment (off by
default): stage 2 also abstaining on shapes wider than the fc6 window (PARTIAL_RADII).

Writes model_store/demo/: ``demo-vgg.pth`` (a torchvision-format state dict, so both heads and the archive builder
take it as they take torchvision's checkpoints), ``labels.json``, ``training.json`` (settings and metrics) and
``MODEL_CARD.md``. Everything random (scenes, sizes, augmentation, order, initialisation) comes from ``--seed``;
the batches are rendered in worker processes, which changes nothing about them.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import time
from collections import deque
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anysize.image_decoding import normalize
from anysize.vgg_models import ARCHS, CONV_LAYOUTS, build_model, pool_up_to, training_size
from anysize_tools.paths import DEMO
from anysize_tools.shapes import CLASSES, render, sample_scene, scene_generator

ARCH = "demo"
DEFAULT_OUTPUT = DEMO
SHORT_SIDES = (48, 448)  # shorter side of a training batch, log-uniform
# A curriculum: from scratch, the full spread of sizes and backgrounds never gets off chance (seen: 500 steps at
# loss ln 10), so training starts with zoom scenes at 96-160 px and widens to the full spread over the first
# quarter of the steps (the VGG paper likewise starts its multi-scale models from a single-scale one).
FIRST_SHORT_SIDES = (96, 160)
HOLD, CURRICULUM = 0.1, 0.35  # the first band alone for 10 % of the steps, the full spread from 35 %
ASPECTS = (1.0, 1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16, 2.0, 0.5)  # width / height
CANVAS_UNITS = (48, 128)  # canvas scenes: the shape's unit (its radius is 0.16-0.42 of it) in px, log-uniform
PIXELS_PER_BATCH = 600_000
MAX_BATCH = 32
BN_BATCHES = 300  # batches of the full spread over which the final batch-norm statistics are averaged
# Stage 2, abstaining: multi-scale evaluation feeds a large canvas at small scales too, where the shape shrinks to a
# few pixels; a model trained only on shapes it can tell answers those views confidently and wrongly, and a
# max-like view combination picks them. So stage 2 adds scenes whose shape is too small to tell (its unit
# log-uniform in ABSTAIN_UNITS px: a radius of 1 to 8 px) with a uniform target, from the stage-1 weights. The top
# of that range touches the smallest labelled shapes (radius 0.16 x 48 = 7.7 px): a thin band gets both targets.
ABSTAIN_SHARE, ABSTAIN_UNITS, ABSTAIN_LR = 0.2, (5, 20), 2e-4
# Stage 2 draws its labelled scenes from step STAGE2_SCENES on (scene indices from 3.2e7), which stage 1 never
# reaches, and its abstain scenes from index 50 x STAGE2_SCENES (5e7), clear of both.
STAGE2_SCENES = 1_000_000
# An experiment, off by default (--partial-share): abstaining at the other end too. The larger views of a filled
# picture show a shape wider than the fc6 window (224 px), of which every window sees only a part (a star's point
# looks like a triangle), and the model answered those parts confidently. With a partial share above 0, that share
# of the stage-2 scenes show a shape whose radius is log-uniform in PARTIAL_RADII px, and a labelled scene whose
# shape's radius is above PARTIAL_RADIUS px (wider than the window) gets the uniform target too. Tried with 0.15 and
# compared with scripts/research/compare_weights.py (docs/weights-comparison.json): no gain, so the shipped weights
# do not use it.
PARTIAL_RADII, PARTIAL_RADIUS = (160, 640), 128
# The held-out conditions printed while training: (name, width, height, canvas unit or None)
VALIDATION = (("zoom 64", 64, 64, None), ("zoom 224", 224, 224, None), ("zoom 448", 448, 448, None),
              ("canvas 448 (112-px shapes)", 448, 448, 112), ("canvas 448 (56-px shapes)", 448, 448, 56))


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def progress(step: int, steps: int) -> float:
    """0 at the start, 1 once the curriculum has reached the full spread of sizes and canvas scenes."""
    return float(np.clip((step - HOLD * steps) / max(1.0, (CURRICULUM - HOLD) * steps), 0.0, 1.0))


def batch_plan(seed: int, step: int, steps: int) -> Tuple[int, int, int]:
    """(width, height, batch size) of training step ``step``: one size per batch, so it stacks without padding."""
    rng = np.random.default_rng([seed, 1, step])
    done = progress(step, steps)
    low, high = (math.exp((1 - done) * math.log(first) + done * math.log(last))
                 for first, last in zip(FIRST_SHORT_SIDES, SHORT_SIDES))
    short = log_uniform(rng, low, high)
    return batch_shape(short, float(rng.choice(ASPECTS)))


def batch_shape(short: float, aspect: float) -> Tuple[int, int, int]:
    """(width, height, batch size) of a batch whose shorter side is ``short`` and width / height ``aspect``: about
    PIXELS_PER_BATCH pixels in all."""
    width, height = (round(short * aspect), round(short)) if aspect >= 1 else (round(short), round(short / aspect))
    return width, height, int(np.clip(round(PIXELS_PER_BATCH / (width * height)), 2, MAX_BATCH))


def maybe_jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """40 % of the pictures JPEG-compressed at quality 30-95 and decoded again."""
    if rng.random() < 0.4:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(30, 96)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def augmented_scene(seed: int, step: int, slot: int, width: int, height: int, canvas_share: float,
                    abstain_above: float | None = None) -> Tuple[np.ndarray, int]:
    """One training picture: a scene of the train split, zoom or canvas, maybe blurred, compressed or noisy;
    labelled -1 (uniform) where the shape's radius is above ``abstain_above`` px."""
    scene = sample_scene(scene_generator(seed, "train", step * MAX_BATCH + slot))
    rng = np.random.default_rng([seed, 2, step, slot])
    short = min(width, height)
    unit = min(short, log_uniform(rng, *CANVAS_UNITS)) if rng.random() < canvas_share else None
    if rng.random() < 0.2:  # a small picture upscaled: the detail of `factor` times fewer pixels
        factor = rng.uniform(0.3, 0.8)
        small_w, small_h = max(16, round(width * factor)), max(16, round(height * factor))
        image = render(scene, small_w, small_h, unit and unit * small_h / height)
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    else:
        image = render(scene, width, height, unit)
    pixels = np.asarray(maybe_jpeg(image, rng))
    if rng.random() < 0.2:
        noise = rng.normal(0, rng.uniform(2, 10), pixels.shape)
        pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    too_wide = abstain_above is not None and scene.radius * (unit or short) > abstain_above
    return np.ascontiguousarray(pixels), -1 if too_wide else scene.label


def render_batch(job: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    seed, step, steps = job
    width, height, size = batch_plan(seed, step, steps)
    canvas_share = 0.5 * progress(step, steps)
    pictures = [augmented_scene(seed, step, slot, width, height, canvas_share) for slot in range(size)]
    return np.stack([p for p, _ in pictures]), np.array([label for _, label in pictures])


def abstain_scene(seed: int, step: int, slot: int, width: int, height: int, partial: bool = False
                  ) -> Tuple[np.ndarray, int]:
    """A scene whose shape is too small to tell, or (``partial``) too large for a window to see whole, maybe
    JPEG-compressed and mirrored; label -1 (a uniform target)."""
    rng = np.random.default_rng([seed, 10 if partial else 9, step, slot])
    first = (60 if partial else 50) * STAGE2_SCENES
    scene = sample_scene(scene_generator(seed, "train", first + step * MAX_BATCH + slot))
    unit = log_uniform(rng, *PARTIAL_RADII) / scene.radius if partial else log_uniform(rng, *ABSTAIN_UNITS)
    image = render(scene, width, height, unit)
    pixels = np.asarray(maybe_jpeg(image, rng))
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels), -1


def render_stage2_batch(job: Tuple[int, int, float]) -> Tuple[np.ndarray, np.ndarray]:
    """A stage-2 batch: the full spread of sizes, ABSTAIN_SHARE of it abstain scenes, the rest as in stage 1; with
    ``partial_share`` above 0, that share abstain scenes of shapes too large too (PARTIAL_RADII, PARTIAL_RADIUS).
    One random draw per slot either way, so a partial share of 0 is exactly the plain stage 2."""
    seed, step, partial_share = job
    rng = np.random.default_rng([seed, 7, step])
    short = log_uniform(rng, *SHORT_SIDES)
    width, height, size = batch_shape(short, float(rng.choice(ASPECTS)))
    too_wide = PARTIAL_RADIUS if partial_share else None
    pictures = []
    for slot in range(size):
        draw = rng.random()
        if draw < ABSTAIN_SHARE + partial_share:
            pictures.append(abstain_scene(seed, step, slot, width, height, partial=draw >= ABSTAIN_SHARE))
        else:
            pictures.append(augmented_scene(seed, STAGE2_SCENES + step, slot, width, height, 0.5, too_wide))
    return np.stack([p for p, _ in pictures]), np.array([label for _, label in pictures])


def render_validation(job) -> Tuple[np.ndarray, np.ndarray]:
    seed, start, count, width, height, unit = job
    images, labels = [], []
    for index in range(start, start + count):
        scene = sample_scene(scene_generator(seed, "val", index))
        images.append(np.asarray(render(scene, width, height, unit)))
        labels.append(scene.label)
    return np.stack(images), np.array(labels)


def batches(pool: Pool, seed: int, count: int, ahead: int = 6, first: int = 0, plan_steps: int = 0, stage: int = 1,
            partial_share: float = 0.0):
    """The batches of steps ``first`` to ``first + count - 1`` of a ``plan_steps``-step plan (default ``count``),
    rendered by the pool at most ``ahead`` steps in advance (bounded memory); ``stage`` 2: render_stage2_batch's."""
    pending = deque()
    for step in range(first, first + count):
        job = (seed, step, plan_steps or count) if stage == 1 else (seed, step, partial_share)
        pending.append(pool.apply_async(render_batch if stage == 1 else render_stage2_batch, (job,)))
        if len(pending) > ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def head_logits(model: torch.nn.Module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """From one pass through the trunk: the adaptive head's logits and the fcn head's class-score map aggregated
    by mean and max. The fcn head is the same classifier's tensors reshaped into convolutions (vgg_models)."""
    features = model.features(x)
    adaptive = model.classifier(torch.flatten(model.avgpool(features), 1))
    fc6, relu6, drop6, fc7, relu7, drop7, fc8 = model.classifier
    k = model.spec.pool_size
    score_map = pool_up_to(features, k)
    score_map = drop6(relu6(F.conv2d(score_map, fc6.weight.view(fc6.out_features, -1, k, k), fc6.bias)))
    score_map = drop7(relu7(F.conv2d(score_map, fc7.weight[:, :, None, None], fc7.bias)))
    score_map = F.conv2d(score_map, fc8.weight[:, :, None, None], fc8.bias)
    return {"adaptive": adaptive, "fcn-mean": score_map.mean(dim=(2, 3)), "fcn-max": score_map.amax(dim=(2, 3))}


@torch.inference_mode()
def validate(model: torch.nn.Module, sets: List[Tuple[str, torch.Tensor, torch.Tensor]]) -> Dict[str, Dict]:
    model.eval()
    results = {}
    for name, images, labels in sets:
        correct = {}
        for start in range(0, len(images), 16):
            outputs = head_logits(model, normalize(images[start:start + 16]))
            for head, logits in outputs.items():
                hits = (logits.argmax(1) == labels[start:start + 16]).sum().item()
                correct[head] = correct.get(head, 0) + hits
        results[name] = {head: round(hits / len(images), 4) for head, hits in correct.items()}
    model.train()
    return results


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, pool: Pool, seed: int, steps: int, count: int) -> None:
    """Replace each batch norm's running mean and variance by their plain average over ``count`` fresh batches
    of the full spread of sizes and backgrounds, in fp32 as served. With momentum 0.1 the running averages
    reflect the last ten or so batches, each of one random size, so the eval-time statistics were a lottery
    (validation at 448 px moved by 20 points between reports). The batches are the ones steps ``steps`` to
    ``steps + count - 1`` would have had: new scenes, rendered like the training ones."""
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    for images, _ in batches(pool, seed, count, first=steps, plan_steps=steps):
        model.features(normalize(torch.from_numpy(images)).contiguous(memory_format=torch.channels_last))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def initialise_like_torchvision(model: torch.nn.Module) -> None:
    """torchvision's VGG initialisation (Kaiming-normal convolutions, unit batch norm, N(0, 0.01) linear layers);
    PyTorch's default left the network at chance for 500 steps."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, 0, 0.01)
            torch.nn.init.zeros_(module.bias)


def loss_of(outputs: Dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The sum over heads of the cross-entropy with the labels (label smoothing 0.05), each picture weighted
    equally; a picture labelled -1 (stage 2's abstain scenes) has the uniform distribution as its target."""
    known = labels >= 0
    loss = torch.zeros(())
    for logits in outputs.values():
        logits = logits.float()
        if known.all():
            loss = loss + F.cross_entropy(logits, labels, label_smoothing=0.05)
            continue
        if known.any():
            loss = loss + F.cross_entropy(logits[known], labels[known], label_smoothing=0.05) * known.float().mean()
        loss = loss - F.log_softmax(logits[~known], 1).mean(1).sum() / len(labels)
    return loss


def validation_sets(seed: int, count: int) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
    sets = []
    for name, width, height, unit in VALIDATION:
        images, labels = render_validation((seed, 0, count, width, height, unit))
        sets.append((name, torch.from_numpy(images), torch.from_numpy(labels)))
    return sets


def run_steps(model: torch.nn.Module, optimizer, schedule, pool: Pool, args: argparse.Namespace, steps: int,
              stage: int, validation, started: float) -> Tuple[List[dict], int]:
    """``steps`` optimiser steps on the stage's batches; a validation report every ``report_every`` steps."""
    history, losses, seen = [], [], 0
    for step, (images, labels) in enumerate(batches(pool, args.seed, steps, stage=stage,
                                                    partial_share=getattr(args, "partial_share", 0.0))):
        x = normalize(torch.from_numpy(images)).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            outputs = head_logits(model, x)
        loss = loss_of(outputs, torch.from_numpy(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item() / len(outputs))
        seen += len(labels)
        if (step + 1) % args.report_every == 0 or step + 1 == steps:
            entry = {"step": step + 1, "images": seen, "loss": round(float(np.mean(losses)), 4),
                     "seconds": round(time.perf_counter() - started, 1), "validation": validate(model, validation)}
            if stage == 2:
                entry["stage"] = 2
            history.append(entry)
            losses = []
            print(json.dumps(entry), flush=True)
    return history, seen


def finish(model: torch.nn.Module, pool: Pool, args: argparse.Namespace, validation, history: List[dict], seen: int,
           started: float, stage: int) -> None:
    """Batch-norm statistics re-estimated (recalibrate_batch_norm), then a last validation report."""
    recalibrate_batch_norm(model, pool, args.seed, args.steps, args.bn_batches)
    entry = {"step": history[-1]["step"], "images": seen, "loss": history[-1]["loss"], "bn_batches": args.bn_batches,
             "seconds": round(time.perf_counter() - started, 1), "validation": validate(model, validation)}
    if stage == 2:
        entry["stage"] = 2
    history.append(entry)
    print(json.dumps(entry), flush=True)


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """The classifier's dropout probability: VGG's 0.5 starves a 128-wide classifier; inert at eval anyway."""
    for layer in model.classifier:
        if isinstance(layer, torch.nn.Dropout):
            layer.p = p


def train(args: argparse.Namespace) -> dict:
    """Stage 1: from torchvision's initialisation, the curriculum over sizes and backgrounds."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = build_model(ARCH, "adaptive", num_classes=len(CLASSES)).train()
    initialise_like_torchvision(model)
    model = model.to(memory_format=torch.channels_last)
    set_dropout(model, args.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    warmup = min(200, args.steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(step, args.steps) / args.steps)))
    with Pool(args.render_processes) as pool:
        validation = validation_sets(args.seed, args.val_images)
        print(f"rendered {len(VALIDATION)} x {args.val_images} validation scenes in "
              f"{time.perf_counter() - started:.0f} s; training {args.steps} steps", flush=True)
        history, seen = run_steps(model, optimizer, schedule, pool, args, args.steps, 1, validation, started)
        finish(model, pool, args, validation, history, seen, started, 1)
    return {"model": model.eval().to(memory_format=torch.contiguous_format), "history": history, "images": seen,
            "seconds": round(time.perf_counter() - started, 1)}


def abstain(model: torch.nn.Module, args: argparse.Namespace) -> dict:
    """Stage 2 from the stage-1 weights: abstain scenes among the usual ones (render_stage2_batch), a cosine decay
    from ABSTAIN_LR to 0, then the batch-norm statistics re-estimated as at the end of stage 1."""
    torch.manual_seed(args.seed + 2)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = model.to(memory_format=torch.channels_last).train()
    set_dropout(model, args.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ABSTAIN_LR, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (
        1 + math.cos(math.pi * min(step, args.abstain_steps) / args.abstain_steps)))
    with Pool(args.render_processes) as pool:
        validation = validation_sets(args.seed, args.val_images)
        history, seen = run_steps(model, optimizer, schedule, pool, args, args.abstain_steps, 2, validation, started)
        finish(model, pool, args, validation, history, seen, started, 2)
    model.eval().to(memory_format=torch.contiguous_format)
    return {"steps": args.abstain_steps, "images": seen, "share": ABSTAIN_SHARE, "units": ABSTAIN_UNITS,
            **({"partial_share": args.partial_share, "partial_radii": PARTIAL_RADII, "partial_radius": PARTIAL_RADIUS}
               if args.partial_share else {}),
            "lr": ABSTAIN_LR, "history": history, "seconds": round(time.perf_counter() - started, 1),
            "threads": args.threads,
            "torch": torch.__version__, "machine": platform.machine(), "command": " ".join(["python"] + sys.argv)}


MODEL_CARD = """# Demo model: `demo` (a narrow VGG) trained on generated shapes at many scales

What it is: a VGG-style network with the same structure as torchvision's VGG (3x3 conv blocks with batch norm,
five 2x2 max pools, then `AdaptiveAvgPool2d(7)` and a three-layer fully connected classifier), {narrower}x narrower:
conv layout `{layout}`, hidden width {hidden}, {params:,} parameters ({megabytes:.1f} MB). As in a real VGG the
feature map is 7x7 at {size}x{size} and each fc6 window sees {size} px. Its state dict has torchvision's key
layout, so the `adaptive` and `fcn` heads and the FC-to-conv conversion apply unchanged.

Classes ({num_classes}): {classes}.

## Data: scale jittering
`anysize_tools/shapes.py` draws one shape per scene at a random position, size, rotation and colour over a
random texture (gradient, stripes, checker or smooth blotches), with antialiased edges; every scene is a function
of (seed, split, index). Training renders {images:,} scenes of the `train` split, each batch at its own size:

- a curriculum: the first {hold:.0%} of the steps are zoom scenes with shorter sides of {first_low}-{first_high} px;
  by {curriculum:.0%} of the steps the range has widened to the full spread below and the canvas share grown to half;
- shorter side log-uniform in {short_low}-{short_high} px, aspect ratio (width:height) one of 1:1, 4:3, 3:4, 16:9,
  9:16, 2:1, 1:2; up to {max_batch} scenes and about {pixels:,} pixels per batch;
- half the scenes "zoom" (shape radius 16-42 % of the shorter side: {zoom_low:.0f} to {zoom_high:.0f} px), half "canvas" (the
  shape's unit log-uniform in {unit_low}-{unit_high} px, radius {canvas_low:.0f} to {canvas_high:.0f} px, on the larger background);
- 20 % rendered at 30-80 % of the size and upscaled (bicubic), 40 % JPEG-compressed (quality 30-95), 20 % with
  Gaussian noise (sigma 2-10), 50 % mirrored.

Validation (printed while training, below): {val_images} scenes of the `val` split per condition.
The resolution study (`docs/resolution-study.md`) uses the `test` split and an independent renderer
(`anysize_tools/shape_probe.py`, plain Pillow drawing, other backgrounds, JPEG).

## Training
Command: `{command}` (seed {seed}): {steps:,} steps, AdamW (lr {lr}, {warmup}-step warm-up then cosine decay to 0,
weight decay 5e-4, torchvision's VGG initialisation), dropout {dropout} in the classifier, label smoothing 0.05, the passes in
{precision} autocast on channels-last tensors (weights, loss and validation in fp32). The loss is the sum of three
cross-entropies on one pass through the trunk: the adaptive head's logits and the fcn head's class-score map
averaged and maxed over positions, so both heads and both aggregations are trained. {threads} torch threads and
{render_processes} rendering processes. At the end the batch-norm statistics are re-estimated as plain averages over
{bn_batches} fresh batches of the full spread (the `{steps} + BN` row below; the running averages remember only the
last few batch sizes). It took {minutes:.1f} minutes on {machine}.
Everything random comes from the seed: two runs on the same machine and library versions give bit-identical
weights (`tests/test_demo_model.py` checks it on a short run).

{stage2}## Accuracy while training (validation scenes, top-1)
{history_rows}

How accuracy changes with input size, aspect ratio and background for every head, aggregation and scale policy,
beside resize-and-centre-crop: `docs/resolution-study.md`. The working range the archives declare
(`handler.working_scale`) comes from that study.
"""


def stage1_summary(args: argparse.Namespace, result: dict) -> dict:
    """training.json's record of stage 1."""
    model = result["model"]
    spec = ARCHS[ARCH]
    params = sum(p.numel() for p in model.parameters())
    return {"arch": ARCH, "seed": args.seed, "training_size": training_size(spec), "steps": args.steps,
               "images": result["images"], "val_images": args.val_images, "lr": args.lr, "dropout": args.dropout,
               "threads": args.threads, "render_processes": args.render_processes, "seconds": result["seconds"],
               "short_sides": SHORT_SIDES, "aspects": ASPECTS, "canvas_units": CANVAS_UNITS,
               "pixels_per_batch": PIXELS_PER_BATCH, "precision": args.precision, "bn_batches": args.bn_batches,
               "first_short_sides": FIRST_SHORT_SIDES, "curriculum": [HOLD, CURRICULUM], "max_batch": MAX_BATCH,
               "final_validation": result["history"][-1]["validation"], "history": result["history"],
               "parameters": params, "torch": torch.__version__, "machine": platform.machine(),
               "command": " ".join(["python"] + sys.argv)}


def write_outputs(output: Path, model: torch.nn.Module, summary: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), output / "demo-vgg.pth")
    (output / "labels.json").write_text(json.dumps(CLASSES, indent=1) + "\n")
    (output / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    (output / "MODEL_CARD.md").write_text(model_card(summary, output / "demo-vgg.pth"))
    print(f"wrote {output}/demo-vgg.pth, labels.json, training.json, MODEL_CARD.md", flush=True)


def model_card(summary: dict, weights: Path) -> str:
    """MODEL_CARD.md from training.json and the weights file alone (what `make docs-check` re-renders)."""
    spec = ARCHS[summary["arch"]]
    names = [name for name, *_ in VALIDATION]
    heads = list(summary["history"][-1]["validation"][names[0]])
    header = "| step | images | loss | " + " | ".join(f"{n}: {h}" for n in names for h in heads) + " | elapsed (s) |"
    rows = [header, "|---:|---:|---:|" + "---:|" * (len(names) * len(heads)) + "---:|"]
    for h in summary["history"] + summary.get("stage2", {}).get("history", []):
        step = ("stage 2: " if h.get("stage") == 2 else "") + (f"{h['step']} + BN" if "bn_batches" in h else
                                                                 str(h["step"]))
        rows.append(f"| {step} | {h['images']:,} | {h['loss']:.3f} | " + " | ".join(
            f"{100 * h['validation'][n][k]:.1f}" for n in names for k in heads) + f" | {h['seconds']} |")
    short, units, first = summary["short_sides"], summary["canvas_units"], summary["first_short_sides"]
    return MODEL_CARD.format(
        layout=" ".join(map(str, CONV_LAYOUTS[spec.layout])), hidden=spec.hidden,
        narrower=round(512 / spec.feature_channels), precision=summary["precision"],
        bn_batches=summary["bn_batches"], params=summary["parameters"], megabytes=weights.stat().st_size / 1e6,
        size=summary["training_size"], num_classes=len(CLASSES), classes=", ".join(CLASSES),
        images=summary["images"], first_low=first[0], first_high=first[1], hold=summary["curriculum"][0],
        curriculum=summary["curriculum"][1], short_low=short[0], short_high=short[1],
        max_batch=summary["max_batch"], pixels=summary["pixels_per_batch"], zoom_low=0.16 * short[0],
        zoom_high=0.42 * short[1], unit_low=units[0], unit_high=units[1], canvas_low=0.16 * units[0],
        canvas_high=0.42 * units[1], val_images=summary["val_images"], command=summary["command"],
        seed=summary["seed"], steps=summary["steps"], lr=summary["lr"], warmup=min(200, summary["steps"] // 10 + 1),
        dropout=summary["dropout"], threads=summary["threads"], render_processes=summary["render_processes"],
        minutes=summary["seconds"] / 60,
        machine=f"{summary['machine']} CPU ({summary['threads']} cores), torch {summary['torch']}",
        history_rows="\n".join(rows), stage2=stage2_text(summary))


STAGE2 = """## Stage 2: abstaining on shapes too small to tell
Multi-scale evaluation feeds a large canvas at small scales too, where the shape shrinks to a few pixels. Trained
only on shapes it can tell, the model answered those views confidently and wrongly, and a max-like combination of
views picked them. Stage 2 starts from the stage-1 weights and trains {steps:,} more steps ({images:,} scenes) on
the full spread of sizes, where {share:.0%} of the scenes are "abstain" scenes: a shape whose unit is log-uniform
in {unit_low}-{unit_high} px (a radius of about {radius_low:.0f} to {radius_high:.0f} px) with the uniform
distribution as its target. The rest are as in stage 1, with half of them canvas scenes. AdamW from lr {lr} with
a cosine decay to 0, then the batch-norm statistics re-estimated as at the end of stage 1. Command: `{command}`;
it took {minutes:.1f} minutes on {machine} (stage 1's time and machine are above). `make train-demo` runs both
stages in one go; stage 1 alone is `--abstain-steps 0` (its command above was recorded before stage 2 existed). Its validation rows are marked "stage 2" below; their elapsed time counts from stage 2's start,
and their loss includes the abstain scenes' cross-entropy with the uniform distribution (at least ln 10 each),
so it does not compare with stage 1's.

"""


def stage2_text(summary: dict) -> str:
    stage2 = summary.get("stage2")
    if not stage2:
        return ""
    low, high = stage2["units"]
    return STAGE2.format(steps=stage2["steps"], images=stage2["images"], share=stage2["share"], unit_low=low,
                         unit_high=high, radius_low=0.16 * low, radius_high=0.42 * high, lr=stage2["lr"],
                         command=stage2["command"], minutes=stage2["seconds"] / 60,
                         machine=f"{stage2['machine']} CPU ({stage2.get('threads', summary['threads'])} cores), "
                                 f"torch {stage2['torch']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=11000)
    parser.add_argument("--val-images", type=int, default=200, help="validation scenes per condition")
    parser.add_argument("--report-every", type=int, default=500, help="steps between validation reports")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="autocast dtype of the training passes (weights, loss and validation stay fp32)")
    parser.add_argument("--bn-batches", type=int, default=BN_BATCHES,
                        help="batches over which the final batch-norm statistics are averaged")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--render-processes", type=int, default=2)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="directory for the weights, labels and card")
    parser.add_argument("--abstain-steps", type=int, default=1500,
                        help="stage 2's steps (abstain scenes among the usual ones); 0: stage 1 only")
    parser.add_argument("--partial-share", type=float, default=0.0,
                        help="an experiment (PARTIAL_RADII): this share of stage 2's scenes abstain on shapes wider "
                             "than the fc6 window; 0 (default): the shipped stage 2")
    parser.add_argument("--from-weights", type=Path,
                        help="skip stage 1: run stage 2 from these stage-1 weights, whose training.json (beside "
                             "them) is kept as the record of stage 1")
    args = parser.parse_args()
    if args.abstain_steps < 0 or (args.from_weights and not args.abstain_steps):
        parser.error("--abstain-steps must be positive with --from-weights, and never negative")
    if args.from_weights:
        record = args.from_weights.parent / "training.json"
        if not record.is_file():
            parser.error(f"--from-weights needs stage 1's training.json beside the weights: {record}")
        summary = json.loads(record.read_text())
        if "stage2" in summary:
            parser.error(f"{args.from_weights} already went through stage 2")
        for name in ("seed", "steps", "precision", "dropout", "val_images", "bn_batches"):
            setattr(args, name, summary[name])  # stage 2 goes on with stage 1's settings, as a combined run would
        model = build_model(ARCH, "adaptive", num_classes=len(CLASSES))
        model.load_state_dict(torch.load(args.from_weights, map_location="cpu", weights_only=True))
    else:
        result = train(args)
        model, summary = result["model"], stage1_summary(args, result)
    if args.abstain_steps:
        summary = {**summary, "stage2": abstain(model, args)}
        summary["final_validation"] = summary["stage2"]["history"][-1]["validation"]
    write_outputs(Path(args.output), model, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
