"""Where a model's weights come from: torchvision's ImageNet checkpoints, a state-dict file, or seeded random.

Every source ends as a *file* in torchvision's state-dict format, so the archive builder can package it without
loading it (a VGG checkpoint is 500+ MB) and the worker converts it to the chosen head at load time.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

IMAGENET = "imagenet"
DOWNLOAD_TIMEOUT_S = 30  # per socket operation, not for the whole file
RANDOM = "random"
# Serving defaults that belong to the weights rather than the architecture (the archive builder's defaults):
# ``working_scale`` (shorter sides the weights were trained for), where it comes from, the score map's
# aggregation, multi-scale ``scales``, ``flip`` ("true"/"false") and how the views are combined
# (``view_aggregation``); each a text, or a {head: text} map.
SERVING_KEYS = ("working_scale", "working_scale_source", "aggregation", "scales", "flip", "view_aggregation")
# torchvision's ImageNet VGGs: from the literature, NOT measured here (ImageNet weights cannot be downloaded on
# the machines this project is built on). torchvision trains them on RandomResizedCrop(224) and evaluates at
# Resize(256) + CenterCrop(224); the VGG paper (Simonyan & Zisserman, arXiv 1409.1556, Table 4) evaluates its
# models densely at shorter sides Q = 256, 384, 512; FixRes (Touvron et al., arXiv 1906.06423) finds that models
# trained on RandomResizedCrop at 224 are best tested above 224, because the crops magnify objects in training.
IMAGENET_SERVING = {
    "working_scale": "256-512",
    "working_scale_source": "literature, not measured here: torchvision's evaluation resize (256), the VGG paper's "
                            "dense-evaluation scales Q = 256-512 (arXiv 1409.1556, Table 4), FixRes (arXiv 1906.06423)",
    "aggregation": {"fcn": "mean"},  # the VGG paper's dense evaluation; no study of these weights could be run here
}
SERVING_SUFFIX = ".serving.json"  # a weights file's serving defaults travel beside it: demo-vgg.pth -> demo-vgg.serving.json


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be had here (offline and not cached, or an unreadable file)."""


@dataclass(frozen=True)
class WeightsFile:
    """A torchvision-format state dict on disk and what to tell users about it."""

    path: Path
    description: str
    trained: bool
    categories: Optional[List[str]] = None
    serving: Dict = field(default_factory=dict)  # SERVING_KEYS: text, or {head: text}

    def serving_default(self, key: str, head: str, fallback: str = "") -> str:
        """A serving default for ``head``: the value itself, or its entry when it is given per head."""
        value = self.serving.get(key, fallback)
        return value.get(head, fallback) if isinstance(value, dict) else value


def imagenet_entry(arch: str):
    """torchvision's weights enum entry (URL, categories, accuracy) for ``arch``."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as error:
        raise WeightsUnavailable(f"torchvision has no ImageNet weights for {arch!r}") from error


def imagenet_categories() -> List[str]:
    return list(imagenet_entry("vgg16").meta["categories"])


def hub_cache_path(arch: str) -> Path:
    """Where torch hub keeps (and torchvision looks for) the checkpoint of ``arch``; honours $TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(imagenet_entry(arch).url)


def imagenet_weights(arch: str, download: bool = True) -> WeightsFile:
    """The ImageNet checkpoint from the torch hub cache, downloading it there first if allowed and possible."""
    entry = imagenet_entry(arch)
    path = hub_cache_path(arch)
    if not path.is_file():
        if not download:
            raise WeightsUnavailable(_offline_message(arch, path, "downloading is disabled"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # torchvision's file names end in the SHA-256 prefix; download_url_to_file checks it.
        hash_prefix = path.stem.rsplit("-", 1)[-1]
        print(f"downloading {entry.url} to {path}", flush=True)
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a network that drops packets must not stall `make serve`
        try:
            torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=hash_prefix, progress=True)
        except Exception as error:  # URLError, timeouts, hash mismatch: all mean "not available here"
            raise WeightsUnavailable(_offline_message(arch, path, f"download failed: {error}")) from error
        finally:
            socket.setdefaulttimeout(previous_timeout)
    acc = entry.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return WeightsFile(path, f"imagenet ({entry.name}, top-1 {acc}%)", True, list(entry.meta["categories"]),
                       IMAGENET_SERVING)


def _offline_message(arch: str, path: Path, why: str) -> str:
    return (
        f"ImageNet weights for {arch} are not available ({why}). Place the file {path.name} "
        f"(from {imagenet_entry(arch).url}) at {path}, or set TORCH_HOME to a directory whose "
        f"hub/checkpoints/ holds it, then build again."
    )


def random_weights(arch: str, seed: int, directory: Path) -> WeightsFile:
    """Seeded random weights saved to ``directory`` in torchvision's format (torchvision's own initialisation for
    its architectures, PyTorch's default for the project's own)."""
    from torchvision.models import get_model

    from .vgg_models import TORCHVISION_ARCHS, build_model

    torch.manual_seed(seed)
    model = get_model(arch, weights=None) if arch in TORCHVISION_ARCHS else build_model(arch, "adaptive")
    path = Path(directory) / f"{arch}-random-seed{seed}.pth"
    torch.save(model.state_dict(), path)
    del model
    return WeightsFile(path, f"random (untrained, seed {seed})", False, imagenet_categories())


def text_or_per_head(value) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))


def file_weights(path: Path) -> WeightsFile:
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    sidecar = path.with_suffix(SERVING_SUFFIX)
    try:
        serving = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except ValueError as error:
        raise WeightsUnavailable(f"{sidecar} is not valid JSON: {error}") from error
    if not isinstance(serving, dict) or not all(text_or_per_head(serving.get(key, "")) for key in SERVING_KEYS):
        raise WeightsUnavailable(f"{sidecar}: expected {', '.join(SERVING_KEYS)}, each a text or a {{HEAD: text}} "
                                 f"map")
    flips = serving.get("flip", "")
    if any(value not in ("", "true", "false") for value in (flips.values() if isinstance(flips, dict) else [flips])):
        raise WeightsUnavailable(f"{sidecar}: flip must be \"true\" or \"false\", not {flips!r}")
    return WeightsFile(path, f"file {path.name}", True, serving=serving)


def resolve_weights(arch: str, source: str, scratch_dir: Optional[Path] = None, seed: int = 0) -> WeightsFile:
    """``imagenet``, ``random`` or a path to a state-dict file, as a ``WeightsFile``."""
    if source == IMAGENET:
        return imagenet_weights(arch)
    if source == RANDOM:
        return random_weights(arch, seed, Path(scratch_dir or tempfile.mkdtemp(prefix="vgg-weights-")))
    return file_weights(Path(source))


def read_state_dict(path: Path, mmap: bool = False) -> dict:
    """Load a state dict without executing pickled code; ``mmap`` leaves the tensors on disk until touched.

    Only zip-format files (torch >= 1.6) can be memory-mapped. torchvision's older checkpoints, the VGG ones among
    them, use the legacy format and are read into memory once instead.
    """
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise WeightsUnavailable(f"{path} is not a readable PyTorch state dict: {error}") from error
    if not isinstance(state, dict) or "classifier.6.weight" not in state:
        raise WeightsUnavailable(f"{path} is not a torchvision VGG state dict (no classifier.6.weight)")
    return state
