"""An independent probe for the demo model: the ten shape classes drawn by other code than the training data's.

`anysize_tools/shapes.py` (the training and test scenes) draws supersampled polygons over four textures. This
module shares nothing with it but the class names: shapes come from Pillow's own primitives (``ellipse``,
``regular_polygon``, outlines, rectangles) drawn without antialiasing and with other proportions (ring thickness,
star depth, cross arm width, arrow head, crescent cut all vary), over other backgrounds (a solid colour, noise
around a colour, a two-colour linear gradient), and every picture is a JPEG. A model tuned to the training
renderer cannot pass it by accident.

    from .shape_probe import probe_jpeg
    body, label = probe_jpeg(seed=1, index=0, width=640, height=480)            # zoom: shape ~ the picture
    body, label = probe_jpeg(seed=1, index=0, width=896, height=896, unit=112)  # canvas: shape at 112-px scale
"""

from __future__ import annotations

import io
import math
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["circle", "ring", "triangle", "square", "pentagon", "hexagon", "star", "cross", "crescent", "arrow"]
BACKGROUNDS = ("solid", "noise", "gradient")
RADIUS_FRACTION = (0.18, 0.40)  # the shape's radius over the shorter side (zoom) or the unit (canvas)


def contrasting_colors(rng: np.random.Generator) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(background, shape) colours whose grey levels differ by at least 50 (ITU-R 601 weights)."""
    while True:
        background, shape = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
        grey = [0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] for c in (background, shape)]
        if abs(grey[0] - grey[1]) >= 50:
            return background, shape


def background_image(rng: np.random.Generator, kind: str, color, width: int, height: int) -> Image.Image:
    if kind == "solid":
        return Image.new("RGB", (width, height), color)
    if kind == "noise":
        sigma = rng.uniform(4, 16)
        pixels = np.asarray(color, dtype=np.float32) + rng.normal(0, sigma, (height, width, 3)).astype(np.float32)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    other = np.clip(np.asarray(color, dtype=np.float32) + rng.uniform(-60, 60, 3), 0, 255)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(0, 1, 256, dtype=np.float32)
    line = (np.asarray(color, dtype=np.float32)[None] * (1 - ramp[:, None]) + other[None] * ramp[:, None])
    strip = Image.fromarray(line.astype(np.uint8)[None].repeat(2, 0), "RGB")  # a 256 x 2 colour ramp
    diagonal = math.ceil(math.hypot(width, height))
    gradient = strip.resize((diagonal, diagonal), Image.Resampling.BILINEAR).rotate(math.degrees(angle))
    return gradient.crop(((diagonal - width) // 2, (diagonal - height) // 2,
                          (diagonal - width) // 2 + width, (diagonal - height) // 2 + height))


def star_points(cx: float, cy: float, r: float, depth: float, turn: float) -> List[Tuple[float, float]]:
    return [(cx + (r if k % 2 == 0 else r * depth) * math.cos(turn + math.pi * k / 5),
             cy + (r if k % 2 == 0 else r * depth) * math.sin(turn + math.pi * k / 5)) for k in range(10)]


def rotated(points, cx: float, cy: float, turn: float) -> List[Tuple[float, float]]:
    cos, sin = math.cos(turn), math.sin(turn)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def draw_shape(mask: ImageDraw.ImageDraw, label: int, cx: float, cy: float, r: float, rng: np.random.Generator):
    """Draw class ``label`` into an "L" mask (255 = shape) centred at (cx, cy) with outer radius r."""
    name, turn = CLASSES[label], rng.uniform(0, 2 * math.pi)
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        mask.ellipse(box, fill=255)
    elif name == "ring":
        mask.ellipse(box, outline=255, width=max(2, round(r * rng.uniform(0.3, 0.5))))
    elif name in ("triangle", "square", "pentagon", "hexagon"):
        sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[name]
        mask.regular_polygon((cx, cy, r), sides, rotation=math.degrees(turn), fill=255)
    elif name == "star":
        mask.polygon(star_points(cx, cy, r, rng.uniform(0.38, 0.5), turn), fill=255)
    elif name == "cross":
        arm = r * rng.uniform(0.25, 0.36)
        for bar in ([(-r, -arm), (r, -arm), (r, arm), (-r, arm)], [(-arm, -r), (arm, -r), (arm, r), (-arm, r)]):
            mask.polygon(rotated(bar, cx, cy, turn), fill=255)
    elif name == "crescent":
        mask.ellipse(box, fill=255)
        shift, cut = r * rng.uniform(0.35, 0.55), r * rng.uniform(0.8, 0.9)
        ox, oy = cx + shift * math.cos(turn), cy + shift * math.sin(turn)
        mask.ellipse((ox - cut, oy - cut, ox + cut, oy + cut), fill=0)
    else:  # arrow
        head, shaft = rng.uniform(0.5, 0.9), r * rng.uniform(0.2, 0.32)
        neck, wing = r - head * r, r * rng.uniform(0.55, 0.8)
        outline = [(-r, -shaft), (neck, -shaft), (neck, -wing), (r, 0), (neck, wing), (neck, shaft), (-r, shaft)]
        mask.polygon(rotated(outline, cx, cy, turn), fill=255)


def probe_image(seed: int, index: int, width: int, height: int, unit: float | None = None
                ) -> Tuple[Image.Image, int, int, float]:
    """(picture, label, JPEG quality, the shape's radius in pixels) of probe ``index``. Zoom (``unit`` None): the
    shape's radius is 18-40 % of the shorter side; canvas: 18-40 % of ``unit`` pixels, anywhere on the larger
    picture."""
    rng = np.random.default_rng([seed, 7919, index])
    label = int(rng.integers(len(CLASSES)))
    background, shape = contrasting_colors(rng)
    picture = background_image(rng, str(rng.choice(BACKGROUNDS)), background, width, height)
    r = rng.uniform(*RADIUS_FRACTION) * (unit or min(width, height))
    cx, cy = rng.uniform(r, max(r, width - r)), rng.uniform(r, max(r, height - r))
    mask = Image.new("L", (width, height), 0)
    draw_shape(ImageDraw.Draw(mask), label, cx, cy, r, rng)
    picture.paste(Image.new("RGB", (width, height), shape), mask=mask)
    return picture, label, int(rng.integers(70, 96)), r


def probe_jpeg(seed: int, index: int, width: int, height: int, unit: float | None = None) -> Tuple[bytes, int]:
    picture, label, quality, _ = probe_image(seed, index, width, height, unit)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue(), label
