"""The handler's options, read in one place from the ``handler:`` section of the archive's model-config.yaml.

The archive builder writes every option explicitly; the defaults here only serve archives built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from .precision import PRECISIONS
from .scale_policy import POLICIES, VIEW_AGGREGATIONS, parse_range, parse_scales
from .size_buckets import parse_sizes
from .vgg_models import AGGREGATIONS, HEAD_CLASSES


@dataclass(frozen=True)
class HandlerOptions:
    arch: str
    head: str
    weights: str = "unknown"  # what the response's "weights" field says
    trained: bool = True  # False: every response carries a warning that the weights are untrained
    weights_file: str = "weights.pth"  # the serialized state dict inside the archive
    labels_file: str = "index_to_name.json"
    topk: int = 5
    max_pixels: int = 4_194_304  # largest input fed unresized (2048 x 2048)
    min_side: int = 32  # VGG's five 2x2 pools need 32 px for a 1x1 feature map
    bomb_factor: int = 16  # images declaring more than bomb_factor * max_pixels are refused before decoding
    # One request with several images (request_formats.py): at most this many, declaring at most this many pixels
    # in all (from their headers, before decoding); larger requests get a 413. The default pixel limit lets one
    # request hold four 12 MP photos.
    max_images: int = 16
    max_request_pixels: int = 50_331_648
    # An answer's JSON may hold at most this many bytes (heatmaps can be large): above, that request gets a 413.
    # TorchServe drops the worker, failing its whole batch, on a response over max_response_size (6,553,500 bytes
    # in config.properties), so this stays below it.
    max_response_bytes: int = 6_000_000
    precision: str = "fp32"
    channels_last: bool = False
    cpu_threads: int = 0  # torch intra-op threads per worker on CPU; 0: the usable cores divided by maxWorkers
    keep_cpu_buffers: bool = True  # on CPU, glibc keeps freed forward-pass buffers for the next pass (cpu_memory)
    warmup_sizes: str = "224x224"  # WIDTHxHEIGHT,...: forward passes at worker start (batch 1 and batchSize)
    compile: bool = False  # torch.compile the model (compiled_model.py); off: eager
    compile_max_sizes: int = 4  # image sizes that get a compiled graph; others run eagerly
    buckets: str = ""  # WIDTHxHEIGHT,...: resize each image to the nearest of these (size_buckets.py); "": exact sizes
    gpu_decode: bool = True  # on a GPU, decode plain JPEGs of a batch together with nvJPEG
    # Scale (scale_policy.py). Each is a default that a request may override (request_options.py).
    scale_policy: str = "working"  # working: rescale into working_scale; native: the image's own size
    working_scale: str = ""  # LOW-HIGH: shorter sides the weights were trained for; "": none declared (= native)
    working_scale_source: str = ""  # where that range comes from (a measurement, or the literature)
    scales: str = ""  # SIDE,...: multi-scale evaluation at these shorter sides; "": one view
    flip: bool = False  # also classify the mirrored image (combined like the other views: view_aggregation)
    view_aggregation: str = "mean"  # how an image's views and mirrors become one answer (scale_policy)
    aggregation: str = "mean"  # fcn head: how the class-score map becomes one score per class (vgg_models)
    jpeg_draft: bool = True  # decode a JPEG fed well below its size at 1/2, 1/4 or 1/8 scale (image_decoding)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        for name in ("topk", "max_pixels", "min_side", "bomb_factor", "compile_max_sizes", "max_images",
                     "max_request_pixels", "max_response_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if int(self.cpu_threads) < 0:
            raise ValueError("cpu_threads must be 0 (automatic) or a positive integer")
        if self.max_pixels < self.min_side * self.min_side:
            raise ValueError("max_pixels must allow at least a min_side x min_side image")
        parse_sizes(self.warmup_sizes)  # a malformed size fails the build, not the worker
        if self.scale_policy not in POLICIES:
            raise ValueError(f"scale_policy must be one of {POLICIES}, not {self.scale_policy!r}")
        working = parse_range(self.working_scale)
        if working and (working[0] < self.min_side or working[1] * working[1] > self.max_pixels):
            raise ValueError(f"working_scale {self.working_scale} must lie within what the network is fed "
                             f"(shorter side >= min_side {self.min_side}, a square of it <= max_pixels)")
        if any(s < self.min_side for s in parse_scales(self.scales)):
            raise ValueError(f"scales must be at least min_side ({self.min_side}) px, not {self.scales!r}")
        if self.view_aggregation not in VIEW_AGGREGATIONS:
            raise ValueError(f"view_aggregation must be one of {VIEW_AGGREGATIONS}, not {self.view_aggregation!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {self.aggregation!r}")
        if self.head not in HEAD_CLASSES:
            raise ValueError(f"head must be one of {tuple(HEAD_CLASSES)}, not {self.head!r}")
        if not HEAD_CLASSES[self.head].has_score_map and self.aggregation != "mean":
            raise ValueError(f"aggregation applies to the fcn head's class-score map only; the {self.head} head "
                             f"keeps 'mean'")
        for width, height in self.bucket_sizes:
            if min(width, height) < self.min_side or width * height > self.max_pixels:
                raise ValueError(f"bucket {width}x{height} is outside what the network is fed "
                                 f"(sides >= min_side, width*height <= max_pixels)")

    @property
    def bomb_pixels(self) -> int:
        """Declared pixels over which an image is refused from its header, before decoding."""
        return self.bomb_factor * self.max_pixels

    @property
    def working_range(self):
        return parse_range(self.working_scale)

    @property
    def bucket_sizes(self):
        return parse_sizes(self.buckets)

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> "HandlerOptions":
        known = {f.name: f.default for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ValueError(f"unknown handler options in model-config.yaml: {', '.join(unknown)}")
        values = {}
        for name, value in section.items():
            default = known[name]
            if isinstance(default, bool):
                value = _as_bool(value)
            elif isinstance(default, int):
                value = int(value)
            values[name] = value
        return cls(**values)

    def to_mapping(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
