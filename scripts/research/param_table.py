#!/usr/bin/env python3
"""Print per-layer parameter counts of both heads, and the output shape at several input sizes.

    python scripts/research/param_table.py --arch vgg16 --sizes 224 448 97x211

It shows the point of the seed notes: a layer's parameter count depends only on its channels and kernel, never on
the input size; the fcn head holds exactly the adaptive head's parameters, only reshaped; and both heads give one
score vector per image at any size. Models are built on PyTorch's meta device, so nothing is allocated or computed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Tuple

import torch

from anysize.vgg_models import ARCHS, HEADS, build_model


def parse_size(text: str) -> Tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width or height)


def parameter_rows(model: torch.nn.Module) -> List[Tuple[str, str, int]]:
    return [(name, "x".join(map(str, p.shape)), p.numel()) for name, p in model.named_parameters()]


def output_shape(model: torch.nn.Module, size: Tuple[int, int]) -> Tuple[int, ...]:
    with torch.no_grad():
        return tuple(model(torch.empty(1, 3, *size, device="meta")).shape)


def fixed_fc_output(model: torch.nn.Module, size: Tuple[int, int]) -> str:
    """What a classifier without the adaptive pool (the seed notes' failing model) does at this size."""
    with torch.no_grad():
        features = model.features(torch.empty(1, 3, *size, device="meta"))
        try:
            return str(list(model.classifier(torch.flatten(features, 1)).shape))
        except RuntimeError:
            return f"shape error ({features.shape[1]}x{features.shape[2]}x{features.shape[3]} features)"


def table(arch: str, sizes: List[Tuple[int, int]]) -> str:
    with torch.device("meta"):
        models: Dict[str, torch.nn.Module] = {head: build_model(arch, head) for head in HEADS}
    rows = {head: parameter_rows(model) for head, model in models.items()}
    lines = [f"{arch}: parameters per layer", "",
             "| layer | adaptive shape | fcn shape | parameters |", "|---|---|---|---:|"]
    for (name, shape_a, count_a), (_, shape_f, count_f) in zip(rows["adaptive"], rows["fcn"]):
        assert count_a == count_f, name
        lines.append(f"| {name} | {shape_a} | {shape_f} | {count_a:,} |")
    totals = {head: sum(count for *_, count in head_rows) for head, head_rows in rows.items()}
    lines.append(f"| **total** | | | **{totals['adaptive']:,}** |")
    lines += ["", "| input (HxW) | adaptive params | fcn params | adaptive output | fcn output | fcn score map "
              "| FC head without pooling |", "|---|---:|---:|---|---|---|---|"]
    for size in sizes:
        outputs = {head: output_shape(model, size) for head, model in models.items()}
        # the count is read again at each size to show that nothing about it changes with the input
        counts = {head: sum(p.numel() for p in model.parameters()) for head, model in models.items()}
        with torch.no_grad():
            score_map = list(models["fcn"].class_score_map(torch.empty(1, 3, *size, device="meta")).shape)
        lines.append(f"| {size[0]}x{size[1]} | {counts['adaptive']:,} | {counts['fcn']:,} | "
                     f"{list(outputs['adaptive'])} | {list(outputs['fcn'])} | {score_map} | "
                     f"{fixed_fc_output(models['adaptive'], size)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg16", choices=sorted(ARCHS))
    parser.add_argument("--sizes", nargs="+", default=["32", "97x211", "224", "225", "448", "480x640", "1024x768"],
                        help="input sizes, N or HxW")
    args = parser.parse_args()
    print(table(args.arch, [parse_size(s) for s in args.sizes]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
