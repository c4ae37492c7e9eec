"""Opt-in size bucketing for mixed-size traffic: each image is resized to the nearest of a few fixed sizes so
that images of different sizes share a forward pass.

Exact grouping (the default) batches only images of identical size, so mixed traffic mostly runs batch 1.
Bucketing trades that for a resize: the answer is no longer the network's answer on the image as sent
(docs/benchmarks.md reports the speed gain and the accuracy cost on the demo model).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torchvision.transforms.v2.functional as F

Size = Tuple[int, int]  # (width, height), as image sizes are usually written


def parse_sizes(text: str) -> List[Size]:
    """'224x224,448x256' -> [(224, 224), (448, 256)]; empty text -> []."""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            width, height = (int(value) for value in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"a size is WIDTHxHEIGHT, e.g. 224x224, not {item!r}") from None
        if width < 1 or height < 1:
            raise ValueError(f"a size needs positive sides, not {item!r}")
        sizes.append((width, height))
    return sizes


def nearest_bucket(width: int, height: int, buckets: Sequence[Size]) -> Size:
    """The bucket that distorts the image least: the smallest sum of |log scale| over the two axes, so a wide
    image goes to a wide bucket and scaling up or down by the same factor costs the same."""
    return min(buckets, key=lambda b: abs(math.log(b[0] / width)) + abs(math.log(b[1] / height)))


def resize_to_bucket(pixels: torch.Tensor, buckets: Sequence[Size]) -> torch.Tensor:
    """(H, W, 3) uint8 -> the same image at its nearest bucket's size (antialiased bilinear), unchanged if it is
    already there."""
    height, width = pixels.shape[:2]
    bucket_width, bucket_height = nearest_bucket(width, height, buckets)
    if (bucket_width, bucket_height) == (width, height):
        return pixels
    resized = F.resize(pixels.permute(2, 0, 1), [bucket_height, bucket_width], antialias=True)
    return resized.permute(1, 2, 0).contiguous()
