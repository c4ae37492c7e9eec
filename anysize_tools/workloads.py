"""Load-test workload profiles and their image cache, shared by the locustfile and the benchmark's bare-model baseline.

A profile is a list of image kinds (size, format, request name) drawn uniformly at random. Its images are
generated scenes of the demo model's data set (anysize_tools/shapes.py), rendered once into a cache directory
with a manifest, and only read afterwards, so the load generator spends nothing on making images.

    python -m anysize_tools.workloads --profile mixed      # fill the cache for one profile and list it
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from .paths import LOADTESTS
from .shapes import render_example

DEFAULT_CACHE = LOADTESTS / ".image-cache"
IMAGES_PER_KIND = 8  # distinct scenes per kind, so neither caches nor JPEG sizes flatter one image
SEED = 5  # scenes come from the test split under this seed (not the demo model's training data)
CACHE_VERSION = 1  # bump when the rendering below changes, so stale caches are not reused

# Realistic photo shapes: square, 4:3, 3:2 and 16:9, in landscape and portrait.
ASPECTS: List[Tuple[int, int]] = [(1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16)]
MIXED_LONG_SIDES = [64, 128, 256, 512, 1024, 2048]
FORMAT_LONG_SIDES = [224, 512]
FORMATS = {"jpeg": ("JPEG", {"quality": 90}), "png": ("PNG", {}), "webp": ("WEBP", {"quality": 90})}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass(frozen=True)
class ImageKind:
    """One resolution class of a profile; ``name`` is the request name its statistics are reported under."""
    name: str
    format: str
    long_side: int
    sizes: Tuple[Tuple[int, int], ...]  # (width, height) per image, cycling through the aspect ratios


def sized(long_side: int, aspect: Tuple[int, int]) -> Tuple[int, int]:
    wide, high = aspect
    if wide >= high:
        return long_side, max(1, round(long_side * high / wide))
    return max(1, round(long_side * wide / high)), long_side


def aspect_cycle(long_side: int) -> Tuple[Tuple[int, int], ...]:
    return tuple(sized(long_side, ASPECTS[i % len(ASPECTS)]) for i in range(IMAGES_PER_KIND))


def profile_kinds(profile: str) -> List[ImageKind]:
    if profile == "fixed":
        return [ImageKind("jpeg 224x224", "jpeg", 224, ((224, 224),) * IMAGES_PER_KIND)]
    if profile == "mixed":
        return [ImageKind(f"jpeg long {side}", "jpeg", side, aspect_cycle(side)) for side in MIXED_LONG_SIDES]
    if profile == "1080p":
        return [ImageKind("jpeg 1920x1080", "jpeg", 1920, ((1920, 1080),) * IMAGES_PER_KIND)]
    if profile == "formats":
        return [ImageKind(f"{fmt} long {side}", fmt, side, aspect_cycle(side))
                for fmt in FORMATS for side in FORMAT_LONG_SIDES]
    raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")


PROFILES = {
    "fixed": "224x224 JPEG (the classic input size)",
    "mixed": "JPEG, long side 64 to 2048 px in six classes, aspect ratios 1:1 to 16:9 both ways",
    "formats": "JPEG, PNG and WebP at long side 224 and 512 px",
    "1080p": "1920x1080 JPEG (a full-HD frame, fed to the network at its own size)",
}


@dataclass(frozen=True)
class CachedImage:
    kind: str  # request name
    format: str
    width: int
    height: int
    label: int
    path: str  # relative to the cache directory

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def encode(image, fmt: str) -> bytes:
    pil_format, options = FORMATS[fmt]
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **options)
    return buffer.getvalue()


def ensure_images(profile: str, cache_dir: Path = DEFAULT_CACHE) -> Tuple[Path, List[CachedImage]]:
    """The profile's images, rendering into ``cache_dir/<profile>-v<N>/`` only what is missing."""
    directory = Path(cache_dir) / f"{profile}-v{CACHE_VERSION}"
    manifest = directory / "manifest.json"
    if manifest.is_file():
        entries = [CachedImage(**entry) for entry in json.loads(manifest.read_text())]
        if all((directory / entry.path).is_file() for entry in entries):
            return directory, entries
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    index = 0
    for kind in profile_kinds(profile):
        for width, height in kind.sizes:
            image, label = render_example(seed=SEED, split="test", index=index, width=width, height=height)
            relative = f"{index:03d}-{width}x{height}.{kind.format}"
            (directory / relative).write_bytes(encode(image, kind.format))
            entries.append(CachedImage(kind.name, kind.format, width, height, label, relative))
            index += 1
    temporary = manifest.with_suffix(".tmp")
    temporary.write_text(json.dumps([asdict(entry) for entry in entries], indent=1))
    temporary.replace(manifest)  # a reader never sees half a manifest
    return directory, entries


def load_images(profile: str, cache_dir: Path = DEFAULT_CACHE) -> Dict[str, List[Tuple[CachedImage, bytes]]]:
    """Each request name with its images' metadata and encoded bytes, read into memory once."""
    directory, entries = ensure_images(profile, cache_dir)
    by_kind: Dict[str, List[Tuple[CachedImage, bytes]]] = {}
    for entry in entries:
        by_kind.setdefault(entry.kind, []).append((entry, (directory / entry.path).read_bytes()))
    return by_kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="mixed")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    directory, entries = ensure_images(args.profile, args.cache_dir)
    print(f"{len(entries)} images in {directory}")
    for entry in entries:
        print(f"  {entry.kind:16s} {entry.width}x{entry.height} {entry.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
