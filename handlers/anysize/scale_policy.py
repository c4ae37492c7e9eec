"""Which sizes an image is fed to the network at: the scale policy, multi-scale views, and the declared working range.

An archive declares the range of shorter sides its weights were trained for (``working_scale``, e.g. "56-448").
Under the ``working`` policy an image whose shorter side lies inside that range is fed at its own size (no resize,
no crop); one outside it is rescaled into the range (aspect kept, antialiased). ``native`` keeps the plain
preprocessing contract (only the max_pixels and min_side limits apply). Multi-scale evaluation feeds one view per
requested shorter side instead (the VGG paper's Q values). Every size then still obeys max_pixels and min_side.
An image's views (and mirrors) are combined into one answer by ``combine_views``.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from .image_decoding import network_size

Size = Tuple[int, int]  # (width, height)
POLICIES = ("working", "native")
# How an image's views become one answer: the mean of their probabilities (the VGG paper's); each class's best
# view, renormalised (``max``); or the mean of each class's two best views, renormalised (``top2``).
# The maximum lets a view at a large scale find a small object without the views at small scales, which cannot see
# it, voting it down; and a view that sees a large object at the wrong scale rarely outscores the view that sees it
# at the right one. But one view alone then decides, and on a large background the small views, where the object
# shrinks to a few pixels, are often confidently wrong. ``top2`` needs a second view to agree, usually the same
# scale's mirror, so that one stray view no longer wins (docs/view-aggregation-choice.json, docs/resolution-study.md).
VIEW_AGGREGATIONS = ("mean", "max", "top2")


def combine_views(rows: torch.Tensor, how: str) -> torch.Tensor:
    """(views, classes) probabilities of one image -> (classes,) probabilities."""
    if how == "mean":
        return rows.mean(0)
    if how in ("max", "top2"):
        best = rows.topk(min(len(rows), 1 if how == "max" else 2), dim=0).values.mean(0)
        return best / best.sum()
    raise ValueError(f"view_aggregation must be one of {VIEW_AGGREGATIONS}, not {how!r}")


def parse_range(text: str) -> Tuple[int, int] | None:
    """'56-448' -> (56, 448); '' -> None (no range declared). Raises ValueError for anything else."""
    text = str(text).strip()
    if not text:
        return None
    try:
        parts = text.split("-")
        if not all(part.strip().isascii() and part.strip().isdigit() for part in parts):
            raise ValueError(text)
        low, high = (int(part) for part in parts)
    except ValueError:
        raise ValueError(f"a working scale is LOW-HIGH in pixels of the shorter side, e.g. 56-448, not {text!r}") \
            from None
    if not 1 <= low <= high:
        raise ValueError(f"a working scale needs 1 <= LOW <= HIGH, not {text!r}")
    return low, high


def parse_scales(text: str) -> Tuple[int, ...]:
    """'224,320,448' -> (224, 320, 448): shorter sides for multi-scale evaluation; '' or 'none' -> () (one view)."""
    text = str(text).strip()
    if not text or text.lower() == "none":
        return ()
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() and len(part) <= 6 for part in parts):
        raise ValueError(f"scales are shorter sides in pixels separated by commas, e.g. 224,448, not {text!r}")
    scales = tuple(int(part) for part in parts)
    if any(scale < 1 for scale in scales):
        raise ValueError(f"scales must be positive, not {text!r}")
    return scales


def with_shorter_side(width: int, height: int, side: int) -> Size:
    scale = side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def working_size(width: int, height: int, working_range: Tuple[int, int]) -> Size:
    """The image's own size when its shorter side is inside the range, else rescaled to the nearer end."""
    low, high = working_range
    short = min(width, height)
    if short < low:
        return with_shorter_side(width, height, low)
    if short > high:
        return with_shorter_side(width, height, high)
    return width, height


def view_sizes(width: int, height: int, policy: str, working_range: Tuple[int, int] | None,
               scales: Sequence[int], max_pixels: int, min_side: int) -> List[Size]:
    """The distinct (width, height) sizes an image of width x height is fed at, main view first."""
    if scales:
        wanted = [with_shorter_side(width, height, side) for side in scales]
    elif policy == "working" and working_range is not None:
        wanted = [working_size(width, height, working_range)]
    else:
        wanted = [(width, height)]
    sizes: List[Size] = []
    for w, h in wanted:
        size = network_size(w, h, max_pixels, min_side)
        if size not in sizes:
            sizes.append(size)
    return sizes
