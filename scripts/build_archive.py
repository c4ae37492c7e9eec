#!/usr/bin/env python3
"""Build a TorchServe model archive (.mar) of a size-agnostic VGG classifier.

    python scripts/build_archive.py --arch vgg16 --head fcn --weights imagenet
    python scripts/build_archive.py --arch vgg11 --head adaptive --weights random --name vgg11-test
    python scripts/build_archive.py --arch vgg16 --head fcn --weights ~/my_vgg16.pth --labels labels.txt

The weights file is packaged as it is (torchvision format) and converted to the head in the worker, so the builder
never holds more than one copy of a 500 MB checkpoint: it checks a zip-format file through a memory map (a
legacy-format one, like torchvision's VGG files, is read once) and the archiver streams it into an uncompressed zip.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
HANDLERS = REPO / "handlers"
sys.path.insert(0, str(HANDLERS))

from handler_config import PRECISIONS, HandlerOptions  # noqa: E402
from scale_policy import POLICIES, VIEW_AGGREGATIONS  # noqa: E402
from vgg_models import AGGREGATIONS, ARCHS, HEADS, load_model, num_classes_in  # noqa: E402
from weights import WeightsFile, read_state_dict, resolve_weights  # noqa: E402

HANDLER_FILE = HANDLERS / "vgg_handler.py"
# Modules the handler imports inside the worker; they travel in the archive next to it.
MODEL_CODE = ["classifier.py", "compiled_model.py", "handler_config.py", "image_decoding.py", "request_errors.py",
              "request_options.py", "scale_policy.py", "size_buckets.py", "stage_metrics.py", "vgg_models.py",
              "weights.py"]


class BuildError(Exception):
    """Bad inputs to the builder, reported as one line instead of a traceback."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("--head", required=True, choices=HEADS)
    parser.add_argument("--weights", required=True, help="imagenet, random, or a path to a torchvision state dict")
    parser.add_argument("--name", help="model name and archive file name (default ARCH-HEAD)")
    parser.add_argument("--export-path", default=str(REPO / "model_store"), help="directory for NAME.mar")
    parser.add_argument("--labels", help="class names: a JSON list or {index: name} file, or one name per line")
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    parser.add_argument("--description", help="what responses say in their \"weights\" field (default: the source)")
    serving = parser.add_argument_group("serving (model-config.yaml)")
    serving.add_argument("--batch-size", type=int, default=4)
    serving.add_argument("--max-batch-delay", type=int, default=20, help="milliseconds to wait for a batch to fill")
    serving.add_argument("--min-workers", type=int, default=1)
    serving.add_argument("--max-workers", type=int, default=1)
    serving.add_argument("--response-timeout", type=int, default=300, help="seconds; large images on CPU are slow")
    serving.add_argument("--startup-timeout", type=int, default=600,
                         help="seconds a worker may take to load and warm up (compiling takes minutes on a CPU)")
    handler = parser.add_argument_group("handler (model-config.yaml, handler section)")
    handler.add_argument("--topk", type=int, default=5)
    handler.add_argument("--max-pixels", type=int, default=4_194_304)
    handler.add_argument("--precision", choices=PRECISIONS, default="fp32")
    handler.add_argument("--channels-last", action="store_true")
    handler.add_argument("--cpu-threads", type=int, default=0,
                         help="torch threads per worker on CPU (default 0: the cores divided by --max-workers)")
    handler.add_argument("--warmup-sizes", default="224x224",
                         help="WIDTHxHEIGHT,... run at worker start (batch 1 and --batch-size); '' for none")
    handler.add_argument("--compile", action="store_true",
                         help="torch.compile the model for the first --compile-max-sizes image sizes")
    handler.add_argument("--compile-max-sizes", type=int, default=4)
    handler.add_argument("--buckets", default="",
                         help="WIDTHxHEIGHT,...: resize every image to the nearest of these sizes so mixed sizes "
                              "batch together (changes answers; default: exact sizes)")
    handler.add_argument("--no-gpu-decode", dest="gpu_decode", action="store_false",
                         help="on a GPU, decode JPEGs one by one on the CPU instead of together with nvJPEG")
    scale = parser.add_argument_group("scale (model-config.yaml, handler section; requests may override them)")
    scale.add_argument("--scale-policy", choices=POLICIES, default="working",
                       help="working: rescale images whose shorter side is outside --working-scale into it; "
                            "native: feed every image at its own size")
    scale.add_argument("--working-scale", default=None,
                       help="LOW-HIGH shorter sides the weights were trained for (default: the weights' own: "
                            "256-512 for ImageNet, a file's WEIGHTS.serving.json, else none = native)")
    scale.add_argument("--scales", default=None, help="SIDE,... or none: multi-scale evaluation at these shorter "
                                                      "sides (default: the weights' own, else one view)")
    scale.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="also classify the mirrored image (default: the weights' own, else no)")
    scale.add_argument("--view-aggregation", choices=VIEW_AGGREGATIONS, default=None,
                       help="how an image's views and mirrors become one answer: mean or each class's best view "
                            "(default: the weights' own, else mean)")
    scale.add_argument("--aggregation", choices=AGGREGATIONS, default=None,
                       help="fcn head: mean, max or lse over the class-score map (default: the weights' own, "
                            "else mean)")
    scale.add_argument("--no-jpeg-draft", dest="jpeg_draft", action="store_false",
                       help="decode JPEGs at full size even when they are fed much smaller")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[build_archive] {message}", flush=True)


def read_labels(path: Optional[str], weights: WeightsFile, num_classes: int) -> List[str]:
    if path:
        text = Path(path).read_text()
        if path.endswith(".json"):
            loaded = json.loads(text)
            try:
                labels = [loaded[str(i)] for i in range(len(loaded))] if isinstance(loaded, dict) else list(loaded)
            except KeyError as missing:
                raise BuildError(f"{path}: no label for index {missing}; keys must be 0 .. N-1") from missing
        else:
            labels = [line.strip() for line in text.splitlines() if line.strip()]
    elif weights.categories and len(weights.categories) == num_classes:
        labels = weights.categories
    elif num_classes == 1000:
        from weights import imagenet_categories
        labels = imagenet_categories()
    else:
        say(f"no labels given for {num_classes} classes; naming them class_0 .. class_{num_classes - 1}")
        labels = [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise BuildError(f"{len(labels)} labels for a model with {num_classes} classes")
    return labels


def model_config(args: argparse.Namespace, weights: WeightsFile) -> dict:
    options = HandlerOptions(
        arch=args.arch, head=args.head, weights=args.description or weights.description, trained=weights.trained,
        weights_file=weights.path.name, topk=args.topk, max_pixels=args.max_pixels,
        precision=args.precision, channels_last=args.channels_last, cpu_threads=args.cpu_threads,
        warmup_sizes=args.warmup_sizes, compile=args.compile, compile_max_sizes=args.compile_max_sizes,
        buckets=args.buckets, gpu_decode=args.gpu_decode, scale_policy=args.scale_policy,
        working_scale=weights.serving_default("working_scale", args.head) if args.working_scale is None
        else args.working_scale,
        working_scale_source=weights.serving_default("working_scale_source", args.head) if args.working_scale is None
        else "given to the archive builder",
        scales=weights.serving_default("scales", args.head) if args.scales is None else args.scales,
        flip=weights.serving_default("flip", args.head, "false") == "true" if args.flip is None else args.flip,
        view_aggregation=args.view_aggregation or weights.serving_default("view_aggregation", args.head, "mean"),
        jpeg_draft=args.jpeg_draft,
        aggregation=args.aggregation or (weights.serving_default("aggregation", "fcn", "mean")
                                         if args.head == "fcn" else "mean"),
    )
    return {
        "minWorkers": args.min_workers,
        "maxWorkers": args.max_workers,
        "batchSize": args.batch_size,
        "maxBatchDelay": args.max_batch_delay,
        "responseTimeout": args.response_timeout,
        "startupTimeout": args.startup_timeout,
        "handler": options.to_mapping(),
    }


def run_archiver(name: str, weights_path: Path, staging: Path, export_path: Path) -> None:
    extra_files = [str(HANDLERS / f) for f in MODEL_CODE] + [str(staging / "index_to_name.json")]
    command = [
        sys.executable, "-c",
        "import sys; from model_archiver.model_packaging import generate_model_archive; generate_model_archive()",
        "--model-name", name, "--version", "1.0",
        "--serialized-file", str(weights_path),
        "--handler", str(HANDLER_FILE),
        "--extra-files", ",".join(extra_files),
        "--config-file", str(staging / "model-config.yaml"),
        "--export-path", str(export_path),
        "--archive-format", "zip-store",  # float weights do not compress; deflating them only costs time
        "--force",
    ]
    subprocess.run(command, check=True)


def build(args: argparse.Namespace) -> Path:
    name = args.name or f"{args.arch}-{args.head}"
    export_path = Path(args.export_path)
    export_path.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"build-{name}-") as scratch:
        staging = Path(scratch)
        say(f"resolving weights '{args.weights}' for {args.arch}")
        weights = resolve_weights(args.arch, args.weights, staging, args.seed)
        say(f"weights: {weights.description} from {weights.path} ({weights.path.stat().st_size / 1e6:.0f} MB)")
        if not weights.trained:
            say("NOTE: random weights are untrained; every response of this model will say so")
        say(f"checking that the state dict fits {args.arch} with the {args.head} head")
        state_dict = read_state_dict(weights.path, mmap=True)
        num_classes = num_classes_in(state_dict)
        try:
            load_model(args.arch, args.head, state_dict)
        except (RuntimeError, KeyError) as error:  # missing keys or mismatched shapes: another architecture
            detail = " ".join(str(error).split())[:400]
            raise BuildError(f"{weights.path} does not fit {args.arch}: {detail}") from error
        del state_dict
        labels = read_labels(args.labels, weights, num_classes)
        (staging / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(labels)}, indent=1))
        try:
            config = model_config(args, weights)
        except ValueError as error:  # HandlerOptions refuses the combination: say so before packaging anything
            hint = " (--working-scale '' declares none)" if "working_scale" in str(error) else ""
            raise BuildError(f"{error}{hint}") from error
        (staging / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        say(f"model-config.yaml: {json.dumps({k: v for k, v in config.items() if k != 'handler'})}")
        say(f"packaging into {export_path / (name + '.mar')}")
        run_archiver(name, weights.path, staging, export_path)
    archive = export_path / f"{name}.mar"
    say(f"done: {archive} ({archive.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    return archive


def main(argv: Optional[List[str]] = None) -> int:
    from weights import WeightsUnavailable

    try:
        build(parse_args(argv))
    except (WeightsUnavailable, BuildError, OSError) as error:
        print(f"[build_archive] error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
