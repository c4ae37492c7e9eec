"""`make serve`: build the default archives if needed, start TorchServe in the background and print a ready-to-paste request.

    python scripts/serve.py            # what `make serve` runs
    python scripts/serve.py --stop     # what `make stop` runs

Default models: demo-adaptive and demo-fcn (the shipped demo model, trained on generated shapes), plus
vgg16-adaptive and vgg16-fcn whenever ImageNet weights can be had (torch hub cache or download); when they cannot,
a notice says how to add them. Nothing serves random weights by default. The server's working directory is
.serve/ (its logs, its token-authorization keys in key_file.json, a sample image).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import List

import yaml

from anysize.vgg_models import HEADS
from anysize.weights import WeightsUnavailable, imagenet_weights

from .archive import ArchiveSpec, build, demo_spec
from .paths import DEMO, HANDLERS, MODEL_STORE, SERVE_DIR
from .torchserve import TorchServe, read_pid, stop_process_group

WORKDIR = SERVE_DIR
DEMO_DESCRIPTION = "demo: narrow VGG trained on generated shapes (model_store/demo/MODEL_CARD.md)"
IMAGENET_ARCH = "vgg16"


def banner(lines: List[str]) -> None:
    width = max(map(len, lines)) + 4
    print("\n" + "!" * width)
    for line in lines:
        print(f"! {line.ljust(width - 4)} !")
    print("!" * width + "\n", flush=True)


def archive_is_current(archive: Path, weights: Path, description: str, sources: List[Path]) -> bool:
    """Reuse an archive only if it holds these trained weights under this description, and neither the handler
    code nor any source file changed after it was built (an archive of the same name built by hand, with random
    weights say, is rebuilt rather than served)."""
    if not archive.is_file():
        return False
    built = archive.stat().st_mtime
    if any(source.exists() and source.stat().st_mtime > built
           for source in [*HANDLERS.rglob("*.py"), weights, *sources]):
        return False
    with zipfile.ZipFile(archive) as mar:
        options = yaml.safe_load(mar.read("model-config.yaml")).get("handler", {})
    return (options.get("trained") is True and options.get("weights_file") == weights.name
            and options.get("weights") == description)


def ensure_archive(spec: ArchiveSpec, sources: List[Path] = ()) -> str:
    archive = MODEL_STORE / f"{spec.model_name}.mar"
    if archive_is_current(archive, Path(spec.weights), spec.description, list(sources)):
        print(f"[serve] using existing {archive} (delete it to rebuild)", flush=True)
        return spec.model_name
    build(spec)
    return spec.model_name


def demo_archives() -> List[str]:
    """The shipped demo model with both heads: works offline, gives meaningful answers on generated shapes."""
    labels, serving = DEMO / "labels.json", DEMO / "demo-vgg.serving.json"  # the study's working scale, aggregation
    return [ensure_archive(demo_spec(head, MODEL_STORE, description=DEMO_DESCRIPTION), [labels, serving])
            for head in HEADS]


def imagenet_archives(arch: str) -> List[str]:
    """Both heads of ``arch`` with ImageNet weights, or none, with a clear notice, when they cannot be had."""
    try:
        weights = imagenet_weights(arch)
    except WeightsUnavailable as error:
        banner([f"Not serving {arch}-adaptive / {arch}-fcn: ImageNet weights are not available here.", "",
                *textwrap.wrap(str(error), 96), "",
                "The demo models are served meanwhile; run `make serve` again once the file is in place."])
        return []
    return [ensure_archive(ArchiveSpec(arch=arch, head=head, weights=str(weights.path),
                                       description=weights.description, export_path=MODEL_STORE)) for head in HEADS]


def write_sample_image(path: Path) -> str:
    """A 640x480 JPEG of a shape drawn by the independent probe (not the training data's renderer), and its class."""
    from .shape_probe import CLASSES, probe_jpeg

    body, label = probe_jpeg(seed=1, index=7, width=640, height=480)
    path.write_bytes(body)
    return CLASSES[label]


def start(arch: str) -> int:
    stop()
    names = demo_archives() + imagenet_archives(arch)
    server = TorchServe(WORKDIR, MODEL_STORE, [f"{n}={n}.mar" for n in names]).start()
    print(f"[serve] TorchServe starting (pid {server.process.pid}); logs in {WORKDIR / 'logs'}", flush=True)
    try:
        server.wait_ready(names)
    except (RuntimeError, TimeoutError) as error:
        print(f"[serve] TorchServe did not become ready: {error}", file=sys.stderr)
        server.stop()
        return 1
    sample = WORKDIR / "sample.jpg"
    truth = write_sample_image(sample)
    key = server.keys().get("inference")
    auth = f'-H "Authorization: Bearer {key}" ' if key else ""
    print(f"\n[serve] ready: {', '.join(names)} at {server.url('inference')}")
    for name in names:
        print(f"  curl {auth}-T {sample} {server.url('inference')}/predictions/{name}")
    print(f"  curl {auth}-H 'X-Topk: 3' -H 'X-Flip: false' -T {sample} "
          f"{server.url('inference')}/predictions/{names[-1]}")
    print(f"  ({sample.name} is a {truth} drawn at 640x480; any JPEG/PNG/WebP/GIF/BMP/TIFF of any size is accepted;"
          " options as headers X-Topk, X-Scale-Policy, X-Scales, X-Flip, X-View-Aggregation, X-Aggregation;"
          " `make stop` stops the server)\n", flush=True)
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
    parser.add_argument("--arch", default=IMAGENET_ARCH, help="the ImageNet model served beside the demo")
    args = parser.parse_args()
    return stop() if args.stop else start(args.arch)


if __name__ == "__main__":
    sys.exit(main())
