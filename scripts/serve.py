#!/usr/bin/env python3
"""Build the default archives if needed, start TorchServe in the background and print a ready-to-paste request.

    python scripts/serve.py            # what `make serve` runs
    python scripts/serve.py --stop     # what `make stop` runs

Default models: vgg16-adaptive and vgg16-fcn with ImageNet weights when they can be had (torch hub cache or
download); offline, seeded random weights with a loud notice. The server's working directory is .serve/ (its logs,
its token-authorization keys in key_file.json, a sample image).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import List

import yaml

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(REPO / "handlers"))

import build_archive  # noqa: E402
from torchserve_runner import TorchServe, read_pid, stop_process_group  # noqa: E402
from weights import WeightsUnavailable, hub_cache_path  # noqa: E402

WORKDIR = REPO / ".serve"
MODEL_STORE = REPO / "model_store"
DEFAULT_ARCH = "vgg16"
DEFAULT_HEADS = ("adaptive", "fcn")


def banner(lines: List[str]) -> None:
    width = max(map(len, lines)) + 4
    print("\n" + "!" * width)
    for line in lines:
        print(f"! {line.ljust(width - 4)} !")
    print("!" * width + "\n", flush=True)


def archive_is_current(archive: Path, arch: str) -> bool:
    """Reuse an archive unless the handler code is newer, or it holds random weights and ImageNet's are now here."""
    if not archive.is_file():
        return False
    if any(source.stat().st_mtime > archive.stat().st_mtime for source in (REPO / "handlers").glob("*.py")):
        return False
    with zipfile.ZipFile(archive) as mar:
        options = yaml.safe_load(mar.read("model-config.yaml"))["handler"]
    return options.get("trained", True) or not hub_cache_path(arch).is_file()


def ensure_archive(arch: str, head: str) -> str:
    name = f"{arch}-{head}"
    archive = MODEL_STORE / f"{name}.mar"
    if archive_is_current(archive, arch):
        print(f"[serve] using existing {archive} (delete it to rebuild)", flush=True)
        return name
    common = ["--arch", arch, "--head", head, "--export-path", str(MODEL_STORE)]
    try:
        build_archive.build(build_archive.parse_args(common + ["--weights", "imagenet"]))
    except WeightsUnavailable as error:
        banner([f"NO IMAGENET WEIGHTS for {name}: serving SEEDED RANDOM WEIGHTS instead.",
                "Its predictions are meaningless (every response says so).", "",
                *textwrap.wrap(str(error), 96), "",
                "To serve real predictions: place that file, then run `make serve` again."])
        build_archive.build(build_archive.parse_args(common + ["--weights", "random"]))
    return name


def write_sample_image(path: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 480), (90, 140, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((220, 140, 420, 340), fill=(240, 200, 40))
    draw.rectangle((0, 380, 640, 480), fill=(60, 150, 60))
    image.save(path, "JPEG", quality=90)


def start(heads: List[str], arch: str) -> int:
    stop()
    names = [ensure_archive(arch, head) for head in heads]
    server = TorchServe(WORKDIR, MODEL_STORE, [f"{n}={n}.mar" for n in names]).start()
    print(f"[serve] TorchServe starting (pid {server.process.pid}); logs in {WORKDIR / 'logs'}", flush=True)
    try:
        server.wait_ready(names)
    except (RuntimeError, TimeoutError) as error:
        print(f"[serve] TorchServe did not become ready: {error}", file=sys.stderr)
        server.stop()
        return 1
    sample = WORKDIR / "sample.jpg"
    write_sample_image(sample)
    key = server.keys().get("inference")
    auth = f'-H "Authorization: Bearer {key}" ' if key else ""
    print(f"\n[serve] ready: {', '.join(names)} at {server.url('inference')}")
    for name in names:
        print(f"  curl {auth}-T {sample} {server.url('inference')}/predictions/{name}")
    print("  (any JPEG/PNG/WebP/GIF/BMP/TIFF of any size works; `make stop` stops the server)\n", flush=True)
    return 0


def stop() -> int:
    pid = read_pid(WORKDIR / "torchserve.pid")
    if pid is not None and stop_process_group(pid):
        print(f"[serve] stopped TorchServe (pid {pid})", flush=True)
    (WORKDIR / "torchserve.pid").unlink(missing_ok=True)
    (WORKDIR / "key_file.json").unlink(missing_ok=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stop", action="store_true", help="stop the server that `make serve` started")
    parser.add_argument("--arch", default=DEFAULT_ARCH)
    parser.add_argument("--heads", nargs="+", default=list(DEFAULT_HEADS))
    args = parser.parse_args()
    return stop() if args.stop else start(args.heads, args.arch)


if __name__ == "__main__":
    sys.exit(main())
