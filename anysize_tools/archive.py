#!/usr/bin/env python3
"""Build a TorchServe model archive (.mar) of a size-agnostic VGG classifier: ``build(ArchiveSpec(...))``.

    python scripts/build_archive.py --arch vgg16 --head fcn --weights imagenet
    python scripts/build_archive.py --arch vgg11 --head adaptive --weights random --name vgg11-test
    python scripts/build_archive.py --arch vgg16 --head fcn --weights ~/my_vgg16.pth --labels labels.txt

The command line (`scripts/build_archive.py`) is a thin layer over ``ArchiveSpec``. The weights file is packaged as
it is (torchvision format) and converted to the head in the worker, so the builder never holds more than one copy
of a 500 MB checkpoint: it checks a zip-format file through a memory map (a legacy-format one, like torchvision's
VGG files, is read once) and the archiver streams it into an uncompressed zip. The worker's code travels as the
`anysize` package folder beside TorchServe's entry file (handlers/vgg_handler.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

import yaml

from anysize.handler_config import HandlerOptions
from anysize.precision import PRECISIONS
from anysize.scale_policy import POLICIES, VIEW_AGGREGATIONS
from anysize.vgg_models import AGGREGATIONS, ARCHS, HEADS, load_model, num_classes_in
from anysize.weights import SERVING_KEYS, WeightsFile, WeightsUnavailable, read_state_dict, resolve_weights

from .paths import DEMO, HANDLERS, MODEL_STORE

HANDLER_FILE = HANDLERS / "vgg_handler.py"  # TorchServe's entry module: defines the class it instantiates
WORKER_PACKAGE = HANDLERS / "anysize"  # copied into the archive as anysize/, imported by the entry module
# HandlerOptions fields the builder fills itself (from the weights and labels), not taken from ArchiveSpec.handler
FILLED_BY_BUILDER = ("arch", "head", "weights", "trained", "weights_file", "labels_file")
HANDLER_FIELDS = {f.name: f for f in dataclasses.fields(HandlerOptions) if f.name not in FILLED_BY_BUILDER}


class BuildError(Exception):
    """Bad inputs to the builder, reported as one line instead of a traceback."""


@dataclass(frozen=True)
class ArchiveSpec:
    """Everything one archive is built from.

    ``handler`` holds HandlerOptions fields by their own names (``{"precision": "bf16", "compile": True}``); a field
    left out takes the weights' serving default where they declare one (working_scale, scales, flip,
    view_aggregation, aggregation: weights.SERVING_KEYS), else HandlerOptions' own default. The other fields are
    TorchServe's per-model settings in model-config.yaml and what the archive is called.
    """
    arch: str
    head: str
    weights: str  # imagenet, random, or a path to a torchvision state dict
    name: str = ""  # model name and archive file name; "" = ARCH-HEAD
    export_path: Path = MODEL_STORE
    labels: str = ""  # a JSON list or {index: name} file, or one name per line; "": the weights' own
    seed: int = 0  # for weights "random"
    description: str = ""  # what responses say in their "weights" field; "": the weights' source
    batch_size: int = 4
    max_batch_delay: int = 20  # milliseconds to wait for a batch to fill
    min_workers: int = 1
    max_workers: int = 1
    response_timeout: int = 300  # seconds; large images on CPU are slow
    startup_timeout: int = 600  # seconds a worker may take to load and warm up (compiling takes minutes on a CPU)
    handler: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        """Refuse what can be refused before any weights are read (a 500 MB download, for imagenet)."""
        if self.arch not in ARCHS:
            raise BuildError(f"unknown arch {self.arch!r}; choose one of {', '.join(sorted(ARCHS))}")
        if self.head not in HEADS:
            raise BuildError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        unknown = sorted(set(self.handler) - set(HANDLER_FIELDS))
        if unknown:
            raise BuildError(f"unknown handler option(s) {', '.join(unknown)}; known: {', '.join(HANDLER_FIELDS)}")

    @property
    def model_name(self) -> str:
        return self.name or f"{self.arch}-{self.head}"

    def handler_options(self, weights: WeightsFile) -> HandlerOptions:
        """The archive's HandlerOptions: what the spec says, else the weights' serving defaults, else the
        HandlerOptions defaults. Raises ValueError for a combination HandlerOptions refuses."""
        given = dict(self.handler)
        if "working_scale" in given:
            given.setdefault("working_scale_source", "given to the archive builder")
        for key in SERVING_KEYS:
            declared = weights.serving_default(key, self.head)
            if key in given or declared == "" or (key == "aggregation" and self.head != "fcn"):
                continue
            given[key] = declared == "true" if key == "flip" else declared
        return HandlerOptions(arch=self.arch, head=self.head, weights=self.description or weights.description,
                              trained=weights.trained, weights_file=weights.path.name, **given)

    def model_config(self, weights: WeightsFile) -> dict:
        """model-config.yaml: TorchServe's per-model settings and the handler section."""
        return {"minWorkers": self.min_workers, "maxWorkers": self.max_workers, "batchSize": self.batch_size,
                "maxBatchDelay": self.max_batch_delay, "responseTimeout": self.response_timeout,
                "startupTimeout": self.startup_timeout, "handler": self.handler_options(weights).to_mapping()}


# ArchiveSpec's TorchServe settings on the command line, with what they mean
SERVING_FLAGS = {"batch_size": "requests TorchServe batches into one handler call",
                 "max_batch_delay": "milliseconds to wait for a batch to fill",
                 "min_workers": "worker processes at start", "max_workers": "worker processes at most",
                 "response_timeout": "seconds a batch may take; large images on CPU are slow",
                 "startup_timeout": "seconds a worker may take to load and warm up (compiling takes minutes on a CPU)"}


def demo_spec(head: str, export_path: Path, **fields) -> ArchiveSpec:
    """The shipped demo model (model_store/demo) with ``head``, named demo-HEAD, with its own labels. Its trunk
    runs channels-last: in fp32 on a CPU its 16- to 128-channel convolutions are 1.4-1.7x faster so (the same
    answers to 1e-6; the resolution study measures it the same way)."""
    handler = {"channels_last": True, **fields.pop("handler", {})}
    return ArchiveSpec(arch="demo", head=head, weights=str(DEMO / "demo-vgg.pth"), labels=str(DEMO / "labels.json"),
                       name=f"demo-{head}", export_path=export_path, handler=handler, **fields)


def parse_args(argv: Optional[Sequence[str]] = None) -> ArchiveSpec:
    """The command line as an ArchiveSpec; handler flags left out stay out of ``handler`` (their defaults are
    HandlerOptions', shown in --help)."""
    defaults = {name: f.default for name, f in HANDLER_FIELDS.items()}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     prog="build_archive.py")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("--head", required=True, choices=HEADS)
    parser.add_argument("--weights", required=True, help="imagenet, random, or a path to a torchvision state dict")
    parser.add_argument("--name", default="", help="model name and archive file name (default ARCH-HEAD)")
    parser.add_argument("--export-path", default=str(MODEL_STORE), help="directory for NAME.mar")
    parser.add_argument("--labels", default="",
                        help="class names: a JSON list or {index: name} file, or one name per line")
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    parser.add_argument("--description", default="",
                        help="what responses say in their \"weights\" field (default: the source)")
    serving = parser.add_argument_group("serving (model-config.yaml)")
    for name, meaning in SERVING_FLAGS.items():
        serving.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(ArchiveSpec, name),
                             help=f"{meaning} (default %(default)s)")
    handler = parser.add_argument_group("handler (model-config.yaml, handler section; default: HandlerOptions')")
    option = handler.add_argument
    option("--topk", type=int)
    option("--max-pixels", type=int, help=f"largest input fed unresized (default {defaults['max_pixels']:,})")
    option("--max-images", type=int, help=f"images one request may hold (default {defaults['max_images']})")
    option("--max-request-pixels", type=int, help=f"pixels the images of one request may declare in all "
                                                  f"(default {defaults['max_request_pixels']:,})")
    option("--precision", choices=PRECISIONS, help=f"default {defaults['precision']}")
    option("--channels-last", action="store_const", const=True)
    option("--cpu-threads", type=int, help="torch threads per worker on CPU (default 0: the cores divided by "
                                           "--max-workers)")
    option("--no-keep-cpu-buffers", dest="keep_cpu_buffers", action="store_const", const=False,
           help="on CPU, leave glibc's allocator thresholds as they are (by default freed forward-pass buffers up "
                "to 32 MB are kept for the next pass: docs/design.md)")
    option("--warmup-sizes", help=f"WIDTHxHEIGHT,... run at worker start (batch 1 and --batch-size); '' for none "
                                  f"(default {defaults['warmup_sizes']})")
    option("--compile", action="store_const", const=True,
           help="torch.compile the model for the first --compile-max-sizes image sizes")
    option("--compile-max-sizes", type=int, help=f"default {defaults['compile_max_sizes']}")
    option("--buckets", help="WIDTHxHEIGHT,...: resize every image to the nearest of these sizes so mixed sizes "
                             "batch together (changes answers; default: exact sizes)")
    option("--no-gpu-decode", dest="gpu_decode", action="store_const", const=False,
           help="on a GPU, decode JPEGs one by one on the CPU instead of together with nvJPEG")
    scale = parser.add_argument_group("scale (model-config.yaml, handler section; requests may override them)")
    scale.add_argument("--scale-policy", choices=POLICIES,
                       help="working (default): rescale images whose shorter side is outside --working-scale into "
                            "it; native: feed every image at its own size")
    scale.add_argument("--working-scale",
                       help="LOW-HIGH shorter sides the weights were trained for (default: the weights' own: "
                            "256-512 for ImageNet, a file's WEIGHTS.serving.json, else none = native)")
    scale.add_argument("--scales", help="SIDE,... or none: multi-scale evaluation at these shorter sides (default: "
                                        "the weights' own, else one view)")
    scale.add_argument("--flip", action=argparse.BooleanOptionalAction,
                       help="also classify the mirrored image (default: the weights' own, else no)")
    scale.add_argument("--view-aggregation", choices=VIEW_AGGREGATIONS,
                       help="how an image's views and mirrors become one answer: their mean, each class's best "
                            "view (max) or the mean of its two best (top2) (default: the weights' own, else mean)")
    scale.add_argument("--aggregation", choices=AGGREGATIONS,
                       help="fcn head: mean, max or lse over the class-score map (default: the weights' own, "
                            "else mean)")
    scale.add_argument("--no-jpeg-draft", dest="jpeg_draft", action="store_const", const=False,
                       help="decode JPEGs at full size even when they are fed much smaller")
    args = vars(parser.parse_args(argv))
    handler_options = {name: args.pop(name) for name in list(args) if name in HANDLER_FIELDS}
    return ArchiveSpec(**{**args, "export_path": Path(args["export_path"]),
                          "handler": {k: v for k, v in handler_options.items() if v is not None}})


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
        from anysize.weights import imagenet_categories
        labels = imagenet_categories()
    else:
        say(f"no labels given for {num_classes} classes; naming them class_0 .. class_{num_classes - 1}")
        labels = [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise BuildError(f"{len(labels)} labels for a model with {num_classes} classes")
    return labels


def stage_worker_code(staging: Path) -> Path:
    """A folder holding only a clean copy of the worker package, so the archive gets it as anysize/ (the archiver
    copies a folder's contents, not the folder; caches and editors' files stay behind)."""
    code = staging / "code"
    shutil.copytree(WORKER_PACKAGE, code / WORKER_PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return code


def package(name: str, serialized_file: Path, handler: str, config: Mapping[str, Any], export_path: Path,
            extra_files: Sequence[Path] = (), model_file: Optional[Path] = None) -> Path:
    """Run torch-model-archiver: the one place an archive is packaged (ours, and the benchmark's stock-handler
    archive, whose ``handler`` is TorchServe's own "image_classifier")."""
    with tempfile.TemporaryDirectory(prefix=f"package-{name}-") as scratch:
        config_file = Path(scratch) / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        command = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", "1.0",
                   "--serialized-file", str(serialized_file), "--handler", handler,
                   "--config-file", str(config_file), "--export-path", str(export_path),
                   "--archive-format", "zip-store",  # float weights do not compress; deflating them only costs time
                   "--force"]
        if extra_files:
            command += ["--extra-files", ",".join(map(str, extra_files))]
        if model_file:
            command += ["--model-file", str(model_file)]
        subprocess.run(command, check=True)
    return export_path / f"{name}.mar"


def build(spec: ArchiveSpec) -> Path:
    name = spec.model_name
    export_path = Path(spec.export_path)
    export_path.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"build-{name}-") as scratch:
        staging = Path(scratch)
        say(f"resolving weights '{spec.weights}' for {spec.arch}")
        weights = resolve_weights(spec.arch, spec.weights, staging, spec.seed)
        say(f"weights: {weights.description} from {weights.path} ({weights.path.stat().st_size / 1e6:.0f} MB)")
        if not weights.trained:
            say("NOTE: random weights are untrained; every response of this model will say so")
        say(f"checking that the state dict fits {spec.arch} with the {spec.head} head")
        state_dict = read_state_dict(weights.path, mmap=True)
        num_classes = num_classes_in(state_dict)
        try:
            load_model(spec.arch, spec.head, state_dict)
        except (RuntimeError, KeyError) as error:  # missing keys or mismatched shapes: another architecture
            detail = " ".join(str(error).split())[:400]
            raise BuildError(f"{weights.path} does not fit {spec.arch}: {detail}") from error
        del state_dict
        labels = read_labels(spec.labels, weights, num_classes)
        (staging / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(labels)}, indent=1))
        try:
            config = spec.model_config(weights)
        except (TypeError, ValueError) as error:  # HandlerOptions refuses the combination: say so before packaging
            hint = " (--working-scale '' declares none)" if "working_scale" in str(error) else ""
            raise BuildError(f"{error}{hint}") from error
        say(f"model-config.yaml: {json.dumps({k: v for k, v in config.items() if k != 'handler'})}")
        say(f"packaging into {export_path / (name + '.mar')}")
        archive = package(name, weights.path, str(HANDLER_FILE), config, export_path,
                          [stage_worker_code(staging), staging / "index_to_name.json"])
    say(f"done: {archive} ({archive.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    return archive


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        build(parse_args(argv))
    except (WeightsUnavailable, BuildError, OSError) as error:
        print(f"[build_archive] error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
