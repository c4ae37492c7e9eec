"""A generated image data set whose classes do not depend on absolute size: ten geometric shapes over textures.

Each image is a *scene* drawn from a seeded generator: the class, the shape's position and size relative to the
image's shorter side, its rotation and colour, and a background texture. A scene can be rendered at any width and
height, so the same test scenes can be looked at through every resolution and aspect ratio. Scene ``index`` of
``split`` under ``seed`` is always the same scene.

    from .shapes import render_example
    image, label = render_example(seed=0, split="test", index=17, width=448, height=448)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["circle", "ring", "triangle", "square", "pentagon", "hexagon", "star", "cross", "crescent", "arrow"]
SPLITS = {"train": 0, "val": 1, "test": 2}
RADIUS_FRACTION = (0.16, 0.42)  # the shape's radius over the shorter side (zoom) or the unit (canvas)
SUPERSAMPLE = 2  # the shape mask is drawn at twice the size and averaged down, so its edges are antialiased


@dataclass(frozen=True)
class Scene:
    label: int
    center: Tuple[float, float]  # in units of the shorter side, from the top-left corner
    radius: float  # in units of the shorter side
    rotation: float  # radians
    shape_color: Tuple[int, int, int]
    texture: str
    texture_colors: Tuple[Tuple[int, int, int], Tuple[int, int, int]]
    texture_frequency: float
    texture_angle: float
    texture_seed: int


def scene_generator(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index])


def random_color(rng: np.random.Generator) -> Tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def luminance(color) -> float:
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]


def sample_scene(rng: np.random.Generator) -> Scene:
    """Everything random about a scene, drawn before knowing the size it will be rendered at."""
    label = int(rng.integers(len(CLASSES)))
    radius = float(rng.uniform(*RADIUS_FRACTION))
    texture_colors = (random_color(rng), random_color(rng))
    background = (luminance(texture_colors[0]) + luminance(texture_colors[1])) / 2
    shape_color = random_color(rng)
    while abs(luminance(shape_color) - background) < 60:  # the shape must stand out from its background
        shape_color = random_color(rng)
    return Scene(
        label=label,
        # position along each axis as a fraction of the free room; turned into coordinates at render time
        center=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))),
        radius=radius,
        rotation=float(rng.uniform(0, 2 * math.pi)),
        shape_color=shape_color,
        texture=str(rng.choice(["gradient", "stripes", "checker", "blotches"])),
        texture_colors=texture_colors,
        texture_frequency=float(rng.uniform(3, 12)),
        texture_angle=float(rng.uniform(0, math.pi)),
        texture_seed=int(rng.integers(2**31)),
    )


def texture(scene: Scene, width: int, height: int, unit: float) -> np.ndarray:
    """The background as (H, W, 3) uint8, defined in units of ``unit`` pixels so it scales with the scene."""
    short = unit
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / short
    a, b = (np.array(c, dtype=np.float32) for c in scene.texture_colors)
    along = x * math.cos(scene.texture_angle) + y * math.sin(scene.texture_angle)
    if scene.texture == "gradient":
        mix = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    elif scene.texture == "stripes":
        mix = 0.5 + 0.5 * np.sin(2 * math.pi * scene.texture_frequency * along)
    elif scene.texture == "checker":
        across = -x * math.sin(scene.texture_angle) + y * math.cos(scene.texture_angle)
        cells = np.floor(along * scene.texture_frequency / 2) + np.floor(across * scene.texture_frequency / 2)
        mix = (cells % 2).astype(np.float32) * 0.6 + 0.2
    else:  # blotches: smooth noise from a coarse random grid (6 cells per unit), upsampled
        cells = (max(2, math.ceil(6 * height / short)), max(2, math.ceil(6 * width / short)))
        coarse = np.random.default_rng(scene.texture_seed).random(cells).astype(np.float32)
        grid = Image.fromarray((coarse * 255).astype(np.uint8), "L").resize((width, height), Image.Resampling.BICUBIC)
        mix = np.asarray(grid, dtype=np.float32) / 255
    return (a + (b - a) * mix[..., None]).clip(0, 255).astype(np.uint8)


def regular_polygon(sides: int, radius: float = 1.0, phase: float = 0.0) -> List[Tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / sides), radius * math.sin(phase + 2 * math.pi * k / sides))
            for k in range(sides)]


def outline(label: int) -> List[List[Tuple[float, float]]]:
    """Filled polygons (unit radius, centred at 0) that make the shape; circles are many-sided polygons.
    A second polygon, where present, is cut out of the first."""
    name = CLASSES[label]
    circle = regular_polygon(96)
    if name == "circle":
        return [circle]
    if name == "ring":
        return [circle, regular_polygon(96, 0.55)]
    if name in ("triangle", "square", "pentagon", "hexagon"):
        return [regular_polygon({"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[name])]
    if name == "star":
        return [[(r * math.cos(math.pi * k / 5), r * math.sin(math.pi * k / 5))
                 for k, r in zip(range(10), [1.0, 0.42] * 5)]]
    if name == "cross":
        w = 0.32
        return [[(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
                 (-w, -w)]]
    if name == "crescent":
        return [circle, [(x + 0.45, y - 0.1) for x, y in regular_polygon(96, 0.85)]]
    # arrow, pointing along +x
    return [[(-1, -0.25), (0.15, -0.25), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, 0.25), (-1, 0.25)]]


def render(scene: Scene, width: int, height: int, object_scale: float | None = None) -> Image.Image:
    """Draw ``scene`` on a width x height canvas. Sizes are fractions of the canvas's shorter side, so a larger
    canvas shows the same picture in more pixels ("zoom"), unless ``object_scale`` fixes that unit in pixels: then a
    larger canvas shows the object at the same pixel size with more background around it ("canvas")."""
    short = object_scale or min(width, height)
    radius = scene.radius * short
    cx = radius + scene.center[0] * (width - 2 * radius)
    cy = radius + scene.center[1] * (height - 2 * radius)
    cos, sin = math.cos(scene.rotation), math.sin(scene.rotation)
    mask = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(mask)
    for fill, polygon in zip((255, 0), outline(scene.label)):
        points = [((cx + radius * (x * cos - y * sin)) * SUPERSAMPLE, (cy + radius * (x * sin + y * cos)) * SUPERSAMPLE)
                  for x, y in polygon]
        draw.polygon(points, fill=fill)
    mask = mask.resize((width, height), Image.Resampling.BOX)
    background = Image.fromarray(texture(scene, width, height, short), "RGB")
    return Image.composite(Image.new("RGB", (width, height), scene.shape_color), background, mask)


def render_example(seed: int, split: str, index: int, width: int, height: int,
                   object_scale: float | None = None) -> Tuple[Image.Image, int]:
    scene = sample_scene(scene_generator(seed, split, index))
    return render(scene, width, height, object_scale), scene.label


def examples(seed: int, split: str, count: int, width: int, height: int, start: int = 0
             ) -> Iterator[Tuple[Image.Image, int]]:
    for index in range(start, start + count):
        yield render_example(seed, split, index, width, height)
