"""The handler's options, read in one place from the ``handler:`` section of the archive's model-config.yaml.

The archive builder writes every option explicitly; the defaults here only serve archives built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from size_buckets import parse_sizes

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


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
    precision: str = "fp32"
    channels_last: bool = False
    cpu_threads: int = 0  # torch intra-op threads per worker on CPU; 0: the usable cores divided by maxWorkers
    warmup_sizes: str = "224x224"  # WIDTHxHEIGHT,...: forward passes at worker start (batch 1 and batchSize)
    compile: bool = False  # torch.compile the model (compiled_model.py); off: eager
    compile_max_sizes: int = 4  # image sizes that get a compiled graph; others run eagerly
    buckets: str = ""  # WIDTHxHEIGHT,...: resize each image to the nearest of these (size_buckets.py); "": exact sizes
    gpu_decode: bool = True  # on a GPU, decode plain JPEGs of a batch together with nvJPEG

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        for name in ("topk", "max_pixels", "min_side", "bomb_factor", "compile_max_sizes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if int(self.cpu_threads) < 0:
            raise ValueError("cpu_threads must be 0 (automatic) or a positive integer")
        if self.max_pixels < self.min_side * self.min_side:
            raise ValueError("max_pixels must allow at least a min_side x min_side image")
        parse_sizes(self.warmup_sizes)  # a malformed size fails the build, not the worker
        for width, height in self.bucket_sizes:
            if min(width, height) < self.min_side or width * height > self.max_pixels:
                raise ValueError(f"bucket {width}x{height} is outside what the network is fed "
                                 f"(sides >= min_side, width*height <= max_pixels)")

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
