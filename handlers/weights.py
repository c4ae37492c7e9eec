"""Where a model's weights come from: torchvision's ImageNet checkpoints, a state-dict file, or seeded random.

Every source ends as a *file* in torchvision's state-dict format, so the archive builder can package it without
loading it (a VGG checkpoint is 500+ MB) and the worker converts it to the chosen head at load time.
"""

from __future__ import annotations

import os
import socket
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

IMAGENET = "imagenet"
DOWNLOAD_TIMEOUT_S = 30  # per socket operation, not for the whole file
RANDOM = "random"


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be had here (offline and not cached, or an unreadable file)."""


@dataclass(frozen=True)
class WeightsFile:
    """A torchvision-format state dict on disk and what to tell users about it."""

    path: Path
    description: str
    trained: bool
    categories: Optional[List[str]] = None


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
    return WeightsFile(path, f"imagenet ({entry.name}, top-1 {acc}%)", True, list(entry.meta["categories"]))


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

    from vgg_models import TORCHVISION_ARCHS, build_model

    torch.manual_seed(seed)
    model = get_model(arch, weights=None) if arch in TORCHVISION_ARCHS else build_model(arch, "adaptive")
    path = Path(directory) / f"{arch}-random-seed{seed}.pth"
    torch.save(model.state_dict(), path)
    del model
    return WeightsFile(path, f"random (untrained, seed {seed})", False, imagenet_categories())


def file_weights(path: Path) -> WeightsFile:
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    return WeightsFile(path, f"file {path.name}", True)


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
